"""POST /v1/completions through a real `tandem serve`, driven by the official openai client.

The oracle is the offline engine on the same checkpoint: greedy text, token
counts, logprobs and prompt logprobs over HTTP must equal what it produces.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tandem import LLM, SamplingParams
from tests.gateway_harness import API_KEY, MODEL, Served

pytestmark = pytest.mark.timeout(300)
PROMPT = "The harbour town woke slowly on winter mornings."


@pytest.fixture(scope="module")
def oracle(served: Served) -> LLM:
    return LLM(model=str(served.checkpoint), dtype="float32", num_kv_blocks=512, max_model_len=256)


def test_greedy_completion_equals_the_offline_engine(client, oracle):
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    want = oracle.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12))[0]
    choice = response.choices[0]
    assert choice.text == want.outputs[0].text
    assert choice.finish_reason == want.outputs[0].finish_reason
    assert response.object == "text_completion" and response.model == MODEL and response.id.startswith("cmpl-")
    assert response.usage.prompt_tokens == len(want.prompt_token_ids)
    assert response.usage.completion_tokens == len(want.outputs[0].token_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_stream_carries_the_same_completion_and_usage(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_sse_framing_ends_with_done(served):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in events[:-1]]
    assert all(c["object"] == "text_completion" and c["choices"][0]["index"] == 0 for c in chunks)


def test_several_prompts_with_n_index_choices_prompt_major(client, oracle):
    prompts = ["Mountains shape the weather", "To bake a simple loaf of bread,"]
    response = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=6, temperature=1.0, seed=11,
                                         logprobs=0, extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert all(len(c.logprobs.tokens) == 6 and c.finish_reason == "length" for c in response.choices)
    prompt_tokens = sum(len(oracle.tokenizer.encode(p)) for p in prompts)
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens == 4 * 6


def test_token_id_prompts(client, oracle):
    ids = oracle.tokenizer.encode(PROMPT)
    want = oracle.generate([ids], SamplingParams(temperature=0, max_tokens=8))[0].outputs[0].text
    single = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    batch = client.completions.create(model=MODEL, prompt=[ids, ids[:5]], max_tokens=8, temperature=0)
    assert single.choices[0].text == want == batch.choices[0].text
    assert single.usage.prompt_tokens == len(ids)
    assert batch.usage.prompt_tokens == len(ids) + 5


def test_stop_string_cuts_the_text(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[6:9]
    assert stop.strip(), f"the greedy text is too uniform to pick a stop string from: {full!r}"
    cut = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "\x00"],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_reproduces_and_different_seeds_differ(client):
    def sample(seed: int) -> list[str]:
        response = client.completions.create(model=MODEL, prompt=PROMPT, n=2, max_tokens=16, temperature=1.5,
                                             seed=seed, extra_body={"ignore_eos": True})
        return [c.text for c in response.choices]

    first = sample(1234)
    assert sample(1234) == first
    assert len({tuple(sample(seed)) for seed in (1, 2, 3)} | {tuple(first)}) > 1


def test_logprobs_equal_the_offline_engine(client, oracle):
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    want = oracle.generate([PROMPT], SamplingParams(temperature=0, max_tokens=6, logprobs=3))[0].outputs[0]
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(want.token_ids)
    for token_id, position, got_logprob, top in zip(want.token_ids, want.logprobs, logprobs.token_logprobs,
                                                    logprobs.top_logprobs):
        assert got_logprob == pytest.approx(position[token_id].logprob, abs=1e-4)
        assert 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(got_logprob, abs=1e-4)  # greedy: the chosen token is the best
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


def test_echo_returns_the_prompt_and_its_logprobs(client, oracle):
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True,
                                         logprobs=2)
    want = oracle.generate([PROMPT], SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=2))[0]
    choice = response.choices[0]
    assert choice.text == PROMPT + want.outputs[0].text
    prompt_ids = want.prompt_token_ids
    assert len(choice.logprobs.tokens) == len(prompt_ids) + 4
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    for i in range(1, len(prompt_ids)):
        expected = want.prompt_logprobs[i][prompt_ids[i]].logprob
        assert choice.logprobs.token_logprobs[i] == pytest.approx(expected, abs=1e-4)
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == 4


def test_echo_of_token_ids_decodes_them_and_streams_first(client, oracle):
    ids = oracle.tokenizer.encode(PROMPT)
    chunks = list(client.completions.create(model=MODEL, prompt=ids, max_tokens=3, temperature=0, echo=True,
                                            stream=True))
    assert chunks[0].choices[0].text.startswith(oracle.tokenizer.decode(ids))
