"""POST /v1/chat/completions through a real `tandem serve`, driven by the official openai client."""

from __future__ import annotations

import pytest

from tandem import LLM, SamplingParams
from tests.gateway_harness import ALIAS, MODEL, Served

pytestmark = pytest.mark.timeout(300)
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three rivers of Europe."},
]


@pytest.fixture(scope="module")
def oracle(served: Served) -> LLM:
    return LLM(model=str(served.checkpoint), dtype="float32", num_kv_blocks=512, max_model_len=256)


def test_greedy_chat_uses_the_chat_template_like_the_offline_engine(client, oracle):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0)
    want = oracle.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=10))[0]
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.outputs[0].text
    assert choice.finish_reason == want.outputs[0].finish_reason
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert response.usage.prompt_tokens == len(want.prompt_token_ids)
    assert response.usage.completion_tokens == len(want.outputs[0].token_ids)


def test_stream_has_openai_chunk_shape(client):
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "length"
    assert finishing[0].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_logprobs_and_top_logprobs(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                              logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 5
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy picks the best
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_n_choices_and_max_completion_tokens(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, max_completion_tokens=5,
                                              max_tokens=50, temperature=1.0, seed=5,
                                              extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in response.choices)
    assert response.usage.completion_tokens == 10


def test_alias_answers_under_its_own_name_and_developer_role_is_system(client, oracle):
    as_developer = [{"role": "developer", "content": "You are terse."}, MESSAGES[1]]
    response = client.chat.completions.create(model=ALIAS, messages=as_developer, max_tokens=6, temperature=0)
    reference = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0)
    assert response.model == ALIAS
    assert response.choices[0].message.content == reference.choices[0].message.content


def test_text_content_parts_are_joined(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name three rivers"},
                                          {"type": "text", "text": "of Europe."}]}]
    joined = [{"role": "user", "content": "Name three rivers\nof Europe."}]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=6, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=joined, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage
