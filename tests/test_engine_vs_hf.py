"""The correctness oracle: tandem's greedy tokens equal HF transformers', token for token.

Every test runs a real tiny checkpoint (one per architecture) through the whole
engine (scheduler, paged KV cache, batched model, sampler) and compares with
HF ``generate`` run one prompt at a time. After every run the pool must be
whole again: every block free (or cached-free), no request holding any.
Each test runs twice: steps one after another, and with overlap scheduling
(step N+1 scheduled and launched before step N's tokens are read back, its
pending input ids filled in from step N's sampled ids).
"""

from __future__ import annotations

import random

import pytest
import torch

from tandem import LLM, SamplingParams
from tests.fixtures.hf_oracle import hf_greedy, hf_logprobs, make_prompts
from tests.fixtures.tiny_models import TINY_ARCHS

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(params=[False, True], ids=["sequential", "overlap"])
def overlap(request) -> bool:
    return request.param


def make_llm(checkpoint, **kwargs) -> LLM:
    kwargs.setdefault("num_kv_blocks", 256)
    kwargs.setdefault("max_model_len", 512)
    return LLM(model=str(checkpoint), dtype="float32", **kwargs)


def assert_no_leak(llm: LLM) -> None:
    stats = llm.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert llm.engine.kv_cache.num_requests == 0


def prompts_for(llm: LLM, n: int = 8, seed: int = 0, max_len: int = 120) -> list[list[int]]:
    return make_prompts(llm.tokenizer, n, random.Random(seed), min_len=3, max_len=max_len)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_mixed_batch_matches_hf(tiny_checkpoints, arch, overlap):
    llm = make_llm(tiny_checkpoints[arch], overlap_scheduling=overlap)
    prompts = prompts_for(llm, n=8, seed=hash(arch) % 1000)
    outputs = llm.generate(prompts, GREEDY)
    expected = hf_greedy(tiny_checkpoints[arch], prompts, MAX_TOKENS)
    for prompt, out, want in zip(prompts, outputs, expected):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == want
        assert out.outputs[0].finish_reason == "length"
    assert_no_leak(llm)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_prefill_matches_hf(tiny_checkpoints, arch, overlap):
    # A 13-token budget splits every long prompt into chunks that share steps with decodes.
    llm = make_llm(tiny_checkpoints[arch], max_num_batched_tokens=13, overlap_scheduling=overlap)
    prompts = prompts_for(llm, n=8, seed=7, max_len=150)
    outputs = llm.generate(prompts, GREEDY)
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(tiny_checkpoints[arch], prompts, MAX_TOKENS)
    assert_no_leak(llm)


@pytest.mark.parametrize("arch", ["llama3", "qwen2"])
def test_prefix_cache_hits_match_hf(tiny_checkpoints, arch, overlap):
    llm = make_llm(tiny_checkpoints[arch], overlap_scheduling=overlap)
    system = prompts_for(llm, n=2, seed=3, max_len=70)[1]  # a 70-token shared prefix
    suffixes = prompts_for(llm, n=8, seed=4, max_len=20)
    prompts = [system + s for s in suffixes]
    first = llm.generate(prompts[:1], GREEDY)
    rest = llm.generate(prompts[1:], GREEDY)
    outputs = first + rest
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(tiny_checkpoints[arch], prompts, MAX_TOKENS)
    # Every later request reused the shared prefix's full blocks (70 // 16 = 4 blocks).
    assert all(o.num_cached_tokens == 64 for o in rest)
    stats = llm.stats()
    assert stats.prefix_cache_hit_rate > 0.5
    assert_no_leak(llm)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_preemption_under_tiny_block_budget_matches_hf(tiny_checkpoints, arch, overlap):
    # 14 blocks x 16 tokens: far fewer than 8 prompts of up to 100 tokens need at once.
    llm = make_llm(tiny_checkpoints[arch], num_kv_blocks=14, max_model_len=160, overlap_scheduling=overlap)
    prompts = prompts_for(llm, n=8, seed=11, max_len=100)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outputs = llm.generate(prompts, params)
    assert llm.stats().num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(tiny_checkpoints[arch], prompts, 24)
    assert_no_leak(llm)


def test_logprobs_match_hf_log_softmax(tiny_checkpoints, overlap):
    ckpt = tiny_checkpoints["qwen2"]
    llm = make_llm(ckpt, overlap_scheduling=overlap)
    prompts = prompts_for(llm, n=3, seed=5, max_len=40)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=5, prompt_logprobs=3)
    for prompt, out in zip(prompts, llm.generate(prompts, params)):
        sample = out.outputs[0]
        reference = hf_logprobs(ckpt, prompt, sample.token_ids)
        for pos, (token_id, position) in enumerate(zip(sample.token_ids, sample.logprobs)):
            assert abs(position[token_id].logprob - reference[pos, token_id].item()) < 1e-4
            assert position[token_id].rank == 1  # greedy picks the most likely token
            top = torch.topk(reference[pos], 5)
            assert set(position) == set(top.indices.tolist())
            for tid, value in zip(top.indices.tolist(), top.values.tolist()):
                assert abs(position[tid].logprob - value) < 1e-4
        # Prompt logprobs: position i holds log p(prompt[i] | prompt[:i]).
        full = hf_logprobs(ckpt, prompt[:1], prompt[1:])
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
        for i, position in enumerate(out.prompt_logprobs[1:]):
            assert abs(position[prompt[i + 1]].logprob - full[i, prompt[i + 1]].item()) < 1e-4
        assert abs(sample.cumulative_logprob - sum(p[t].logprob for p, t in zip(sample.logprobs, sample.token_ids))) < 1e-5
    assert_no_leak(llm)
