"""Sampling through the whole engine: seeds, top_k=1, n > 1, stop strings, aborts."""

from __future__ import annotations

import random

import pytest

from tandem import LLM, SamplingParams
from tests.fixtures.hf_oracle import make_prompts
from tests.test_engine_vs_hf import assert_no_leak, make_llm


@pytest.fixture(scope="module", params=[False, True], ids=["sequential", "overlap"])
def llm(tiny_checkpoints, request) -> LLM:
    return make_llm(tiny_checkpoints["llama"], overlap_scheduling=request.param)


def prompts(llm: LLM, n: int, seed: int) -> list[list[int]]:
    return make_prompts(llm.tokenizer, n, random.Random(seed), min_len=4, max_len=60)


def test_seeded_sample_is_independent_of_batch_mix(llm):
    target = prompts(llm, 1, seed=1)[0]
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate([target], seeded)[0].outputs[0].token_ids
    others = prompts(llm, 6, seed=2)
    noisy = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    # Same request placed at different positions among unseeded and greedy neighbours.
    mixed_a = llm.generate(others[:3] + [target] + others[3:], [noisy] * 3 + [seeded] + [noisy] * 3)
    mixed_b = llm.generate([target] + others, [seeded] + [SamplingParams(temperature=0, max_tokens=20)] * 6)
    assert mixed_a[3].outputs[0].token_ids == alone
    assert mixed_b[0].outputs[0].token_ids == alone
    other_seed = llm.generate([target], SamplingParams(temperature=0.9, top_p=0.95, seed=99, max_tokens=16, ignore_eos=True))
    assert other_seed[0].outputs[0].token_ids != alone
    assert_no_leak(llm)


def test_top_k_one_equals_greedy(llm):
    batch = prompts(llm, 6, seed=3)
    greedy = llm.generate(batch, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    top1 = llm.generate(batch, SamplingParams(temperature=1.0, top_k=1, max_tokens=12, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in top1] == [o.outputs[0].token_ids for o in greedy]


def test_n_samples_share_prompt_blocks(llm):
    prompt = prompts(llm, 2, seed=4)[1][:40]  # 40 tokens: 2 full blocks of 16
    before = llm.stats().prefix_cache_hit_tokens
    out = llm.generate([prompt], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert all(len(o.token_ids) == 8 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1  # distinct samples
    # Samples 1 and 2 found the prompt's two full blocks that sample 0 allocated.
    assert llm.stats().prefix_cache_hit_tokens - before == 2 * 32
    assert_no_leak(llm)


def test_stop_string_ends_output_before_it(llm):
    prompt = prompts(llm, 1, seed=5)[0]
    full = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0].outputs[0]
    text = full.text
    assert len(text) > 12
    stop = text[8:11]  # very likely spans a token boundary in a 768-token BPE
    cut = text.find(stop)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]))[0]
    sample = out.outputs[0]
    assert sample.text == text[:cut]
    assert sample.finish_reason == "stop" and sample.stop_reason == stop
    assert len(sample.token_ids) < 24
    assert_no_leak(llm)


def test_stop_token_id_and_max_tokens(llm):
    prompt = prompts(llm, 1, seed=6)[0]
    full = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0].outputs[0]
    stop_id = full.token_ids[4]
    first = full.token_ids.index(stop_id)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop_token_ids=[stop_id]))
    sample = out[0].outputs[0]
    assert sample.token_ids == full.token_ids[: first + 1]
    assert sample.finish_reason == "stop" and sample.stop_reason == stop_id
    assert full.finish_reason == "length"


def test_abort_mid_generation_frees_everything(llm):
    engine = llm.engine
    for i, prompt in enumerate(prompts(llm, 4, seed=8)):
        engine.add_request(f"abort-{i}", prompt, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.stats().num_free_blocks < engine.stats().num_total_blocks
    engine.abort_request("abort-1")
    engine.abort_request("abort-3")
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert finished["abort-0"].outputs[0].finish_reason == "length"
    assert finished["abort-1"].outputs[0].finish_reason == "abort"
    assert finished["abort-3"].outputs[0].finish_reason == "abort"
    assert_no_leak(llm)


def test_metrics_are_reported(llm):
    out = llm.generate([prompts(llm, 1, seed=9)[0]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0]
    assert out.metrics.time_to_first_token is not None and out.metrics.time_to_first_token > 0
    assert out.metrics.decode_time is not None and out.metrics.decode_time >= 0
