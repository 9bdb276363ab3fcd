"""The engine on its own thread, and the split of one sample across two engines.

A mesh runs the prompt on one engine (prefill) and the rest on another
(decode), handing over the first token and the KV blocks. These tests do that
handover by hand, without gRPC, and require the very tokens one engine alone
produces, for greedy and for seeded sampling.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from services.engine.async_engine import AsyncEngine
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from tandem import SamplingParams
from tests.fixtures.hf_oracle import make_prompts


def make_engine(checkpoint) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(checkpoint), dtype="float32", num_kv_blocks=128, max_model_len=256))


@pytest.fixture(scope="module")
def engines(tiny_checkpoints):
    ckpt = tiny_checkpoints["llama"]
    return make_engine(ckpt), make_engine(ckpt), make_engine(ckpt)


def run_to_end(engine: LLMEngine, request_id: str, prompt, params, **presampled):
    engine.add_prepared(engine.prepare_request(request_id, prompt, params, **presampled))
    final = None
    while final is None:
        for out in engine.step():
            if out.request_id == request_id and out.finished:
                final = out
    return final


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.8, top_p=0.9, seed=42, max_tokens=12, ignore_eos=True, logprobs=2),
    ],
    ids=["greedy", "seeded"],
)
def test_split_prefill_decode_equals_one_engine(engines, params):
    whole, prefill, decode = engines
    prompt = make_prompts(whole.tokenizer, 2, random.Random(3), min_len=40, max_len=70)[1]
    expected = run_to_end(whole, f"whole-{params.seed}", prompt, params).outputs[0]

    first = run_to_end(prefill, f"p-{params.seed}", prompt, dataclasses.replace(params, max_tokens=1)).outputs[0]
    assert first.token_ids == expected.token_ids[:1]
    # Hand the prompt's full blocks over, as the kvstore would.
    hashes = prefill.blocks.chain_hashes(prompt)
    exported = [b for b in _export_prefix(prefill, prompt) if b.block_hash in hashes]
    assert decode.blocks.preload([b.block_hash for b in exported], [b.payload for b in exported]) == len(hashes)

    first_lp = None
    if params.logprobs is not None:
        position = first.logprobs[0]
        from services.engine.sampler import SampleLogprobs

        top = sorted(position.items(), key=lambda kv: kv[1].rank)
        first_lp = [SampleLogprobs(first.token_ids[0], position[first.token_ids[0]].logprob, 1,
                                   [t for t, _ in top], [lp.logprob for _, lp in top])]
    rest = run_to_end(decode, f"d-{params.seed}", prompt, params,
                      presampled_token_ids=first.token_ids, presampled_logprobs=first_lp)
    assert rest.outputs[0].token_ids == expected.token_ids
    assert rest.num_cached_tokens == len(hashes) * 16
    if params.logprobs is not None:
        got = [p[t].logprob for p, t in zip(rest.outputs[0].logprobs, rest.outputs[0].token_ids)]
        want = [p[t].logprob for p, t in zip(expected.logprobs, expected.token_ids)]
        assert got == pytest.approx(want, abs=1e-4)


def _export_prefix(engine: LLMEngine, prompt: list[int]):
    """Recompute the prompt with publishing on and collect the exported blocks."""
    collected = []
    target = "export-probe"

    def listener(step):
        collected.extend(engine.blocks.computed_in(step, {f"{target}#0"}))

    engine.kv_cache.pool.reset_prefix_cache()
    engine.step_listeners.append(listener)
    try:
        run_to_end(engine, target, prompt, SamplingParams(temperature=0, max_tokens=1))
    finally:
        engine.step_listeners.remove(listener)
    return collected


def test_presampled_token_can_finish_the_request(engines):
    _, _, decode = engines
    out = run_to_end(decode, "one-token", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=1),
                     presampled_token_ids=[9])
    assert out.outputs[0].token_ids == [9] and out.outputs[0].finish_reason == "length"
    assert decode.kv_cache.num_requests == 0


def test_async_engine_streams_and_aborts(tiny_checkpoints):
    engine = make_engine(tiny_checkpoints["qwen3"])
    runner = AsyncEngine(engine).start()
    try:
        prompt = list(range(5, 30))
        stream = runner.generate("s1", prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        outputs = list(stream)
        assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 8
        lengths = [len(o.outputs[0].token_ids) for o in outputs]
        assert lengths == sorted(lengths)

        long = runner.generate("s2", prompt, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        long.get(timeout=30)
        runner.abort("s2")
        final = [o for o in long][-1]
        assert final.outputs[0].finish_reason == "abort"
        assert runner.call(lambda e: e.kv_cache.num_requests) == 0
        with pytest.raises(Exception, match="empty"):
            runner.generate("bad", [], SamplingParams())
    finally:
        runner.shutdown()
