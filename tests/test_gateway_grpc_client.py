"""The typed gRPC clients (tandem.client) against the same `tandem serve`, and server reflection.

The same request over gRPC and over HTTP must produce the same tokens.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.engine.tokenizer import load_tokenizer
from tandem import SamplingParams
from tandem.client import AsyncTandemClient, ModelInfo, TandemClient, TandemRpcError
from tests.gateway_harness import ALIAS, MAX_MODEL_LEN, MODEL, Served

pytestmark = pytest.mark.timeout(120)
PROMPT = "A language model reads a sequence of tokens"
MESSAGES = [{"role": "user", "content": "Count to three."}]


@pytest.fixture(scope="module")
def grpc_client(served: Served):
    with TandemClient(served.grpc_address, timeout=60) as client:
        yield client


def test_same_tokens_over_grpc_and_http(grpc_client, client, served):
    tokenizer = load_tokenizer(str(served.checkpoint))
    params = SamplingParams(n=2, temperature=1.0, seed=42, max_tokens=10, logprobs=0, ignore_eos=True)
    over_grpc = grpc_client.complete(PROMPT, params)
    over_http = client.completions.create(model=MODEL, prompt=PROMPT, n=2, temperature=1.0, seed=42, max_tokens=10,
                                          logprobs=0, extra_body={"ignore_eos": True})
    assert [s.text for s in over_grpc.samples] == [c.text for c in over_http.choices]
    for sample, choice in zip(over_grpc.samples, over_http.choices):
        assert [tokenizer.decode([t]) for t in sample.token_ids] == choice.logprobs.tokens
        assert [lp.logprob for lp in sample.logprobs] == pytest.approx(choice.logprobs.token_logprobs, abs=1e-4)
        assert sample.finish_reason == choice.finish_reason == "length"
    assert len(over_grpc.prompt_token_ids) == over_http.usage.prompt_tokens
    assert over_grpc.num_generated_tokens == over_http.usage.completion_tokens


def test_chat_over_grpc_equals_http(grpc_client, client):
    over_grpc = grpc_client.complete(MESSAGES, SamplingParams(temperature=0, max_tokens=8))
    over_http = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=8)
    assert over_grpc.samples[0].text == over_http.choices[0].message.content
    assert len(over_grpc.prompt_token_ids) == over_http.usage.prompt_tokens


def test_streamed_deltas_are_typed(grpc_client):
    deltas = list(grpc_client.generate(PROMPT, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)))
    assert deltas[0].prompt_token_ids and deltas[0].num_prompt_tokens == len(deltas[0].prompt_token_ids)
    assert sum(len(d.token_ids) for d in deltas) == 4
    assert deltas[-1].finish_reason == "length"


def test_models_health_and_typed_errors(grpc_client):
    models = grpc_client.list_models()
    assert [m.id for m in models] == [MODEL, ALIAS]
    assert isinstance(models[0], ModelInfo) and models[0].max_model_len == MAX_MODEL_LEN
    assert grpc_client.health()
    with pytest.raises(TandemRpcError) as info:
        grpc_client.complete(PROMPT, SamplingParams(max_tokens=2), model="nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(TandemRpcError) as info:
        grpc_client.complete(PROMPT, SamplingParams(max_tokens=MAX_MODEL_LEN))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_async_client_streams_and_aborts(served):
    async def run() -> tuple[list[str], bool, TandemRpcError | None, int]:
        async with AsyncTandemClient(served.grpc_address, timeout=60) as client:
            done = await client.complete(PROMPT, SamplingParams(temperature=0, max_tokens=3))
            params = SamplingParams(temperature=0, max_tokens=240, ignore_eos=True)
            received, aborted, error = 0, False, None
            try:
                async for delta in client.generate(PROMPT, params, request_id="abort-me"):
                    received += len(delta.token_ids)
                    if not aborted:
                        aborted = await client.abort("abort-me")
            except TandemRpcError as exc:
                error = exc
            return [s.text for s in done.samples], aborted, error, received

    texts, aborted, error, received = asyncio.run(run())
    assert len(texts) == 1 and texts[0]
    # An aborted request ends its stream with CANCELLED, well before its max_tokens.
    assert aborted and error is not None and error.code == grpc.StatusCode.CANCELLED
    assert received < 240


def test_reflection_lists_the_router_service(served):
    channel = grpc.insecure_channel(served.grpc_address)
    try:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"tandem.v1.Router", "grpc.health.v1.Health"} <= services
        pool = DescriptorPool(database)
        router = pool.FindServiceByName("tandem.v1.Router")
        assert {m.name for m in router.methods} == {"Generate", "Abort", "ListModels"}
        assert router.FindMethodByName("Generate").server_streaming
    finally:
        channel.close()
