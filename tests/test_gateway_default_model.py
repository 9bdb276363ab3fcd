"""The README's main command: `tandem serve` on the embedded SmolLM2, answering a curl chat request."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from services.engine.errors import ModelFilesMissingError
from services.engine.models.default_model import default_model_path
from tests.gateway_harness import start_serve

pytestmark = pytest.mark.timeout(300)
DEFAULT_NAME = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    try:
        default_model_path()
    except ModelFilesMissingError as exc:
        pytest.skip(str(exc))
    process, url = start_serve("serve-default", [], tmp_path_factory.mktemp("default-serve"))
    try:
        yield url
    finally:
        process.stop()


def chat(url: str, body: dict) -> dict:
    """POST with curl when it is installed (as the README does), else with httpx."""
    if shutil.which("curl"):
        result = subprocess.run(
            ["curl", "-sS", "--fail-with-body", f"{url}/v1/chat/completions", "-H", "Content-Type: application/json",
             "-d", json.dumps(body)], capture_output=True, text=True, timeout=120, check=True)
        return json.loads(result.stdout)
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).raise_for_status().json()


def test_default_serve_answers_a_chat_request(default_server):
    models = httpx.get(f"{default_server}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [DEFAULT_NAME]
    answer = chat(default_server, {
        "model": DEFAULT_NAME,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 20,
        "temperature": 0,
    })
    assert "Paris" in answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0
