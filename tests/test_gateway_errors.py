"""Error statuses of the HTTP gateway, each with OpenAI's error body; models, health, OpenAPI.

(429 and 503 need a mesh under load or without workers: test_gateway_admission.py.)
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway_harness import ALIAS, MAX_MODEL_LEN, MODEL

pytestmark = pytest.mark.timeout(120)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 0}, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 99}, "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": [""]}, "stop[0]"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, -2]}, "prompt[1]"),
    ("/v1/completions", {"model": MODEL, "prompt": []}, None),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
     "messages[0].role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
     "top_logprobs"),
    ("/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, None),
])
def test_bad_parameters_are_400_naming_the_parameter(served, path, body, param):
    assert_openai_error(served.post(path, body), 400, param)


def test_invalid_json_and_wrong_types_are_400(served):
    assert_openai_error(served.post("/v1/completions", '{"prompt": '), 400)
    # JSON can escape a lone surrogate, which no UTF-8 string (nor the router) can carry.
    assert_openai_error(served.post("/v1/completions", '{"prompt": "ab\\ud800"}'), 400, "prompt")
    body = '{"messages": [{"role": "user", "content": "\\udc00"}]}'
    assert_openai_error(served.post("/v1/chat/completions", body), 400, "messages[0].content")
    assert_openai_error(served.post("/v1/completions", "[1, 2]"), 400)
    assert_openai_error(served.post("/v1/chat/completions", {"messages": "hi"}), 400, "messages")


def test_prompt_plus_max_tokens_beyond_the_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hello there", max_tokens=MAX_MODEL_LEN)
    assert "context" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=list(range(3, 3 + MAX_MODEL_LEN)), max_tokens=1)


def test_token_id_outside_the_vocabulary_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[5, 10_000_000], max_tokens=1)
    assert info.value.body["type"] == "invalid_request_error"


def test_missing_or_wrong_api_key_is_401(served):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    error = assert_openai_error(served.post("/v1/completions", body, api_key=None), 401)
    assert error["code"] == "invalid_api_key"
    assert_openai_error(served.post("/v1/chat/completions", body, api_key="sk-wrong"), 401)
    with pytest.raises(openai.AuthenticationError):
        served.openai(api_key="sk-wrong").models.list()


def test_unknown_model_is_404(client, served):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-unknown", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    assert_openai_error(httpx.get(served.url + "/v1/nowhere", timeout=10), 404)


def test_models_lists_every_served_name(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, ALIAS]
    assert all(m.object == "model" and m.owned_by == "tandem" for m in models)
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN


def test_health_openapi_and_metrics_need_no_key(served):
    assert httpx.get(served.url + "/health", timeout=10).json() == {"status": "ok"}
    schema = httpx.get(served.url + "/openapi.json", timeout=10).json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"} <= set(schema["paths"])
    metrics = httpx.get(served.url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "tandem:http_requests_total" in metrics.text


def test_every_status_is_counted(served):
    before = served.metrics().get(("tandem:http_requests_total", (("endpoint", "/v1/completions"),
                                                                  ("status", "401"))), 0.0)
    served.post("/v1/completions", {"prompt": "x"}, api_key=None)
    after = served.metrics()[("tandem:http_requests_total", (("endpoint", "/v1/completions"), ("status", "401")))]
    assert after == before + 1
