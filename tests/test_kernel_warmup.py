"""The start-up warm-up of prompt-step kernel variants: one step per scan width, nothing left behind."""

from __future__ import annotations

import pytest

from services.engine.kernel_warmup import prompt_step_widths, warm_up_logits, warm_up_prompt_steps
from services.engine.llm import LLM
from services.engine.sampling_params import SamplingParams


def test_widths_cover_every_power_of_two_up_to_the_batch_limit():
    assert prompt_step_widths(1) == [16]
    assert prompt_step_widths(16) == [16]
    assert prompt_step_widths(17) == [16, 32]
    assert prompt_step_widths(256) == [16, 32, 64, 128, 256]
    assert prompt_step_widths(384) == [16, 32, 64, 128, 256, 512]


@pytest.mark.parametrize("block_size", [16, 1])
def test_warm_up_runs_one_step_per_width_and_leaves_the_cache_as_it_was(tiny_checkpoints, block_size):
    llm = LLM(str(tiny_checkpoints["llama"]), dtype="float32", num_kv_blocks=200, max_model_len=128,
              max_num_seqs=40, block_size=block_size)
    engine = llm.engine
    steps: list[int] = []
    execute = engine.runner.execute
    engine.runner.execute = lambda step, **kw: (steps.append(len(step.chunks)), execute(step, **kw))[1]
    free_before = engine.kv_cache.pool.num_free_blocks
    prompt = [5, 6, 7, 8, 9]
    expected = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].token_ids

    warm_up_prompt_steps(engine.runner, engine.kv_cache, max_num_seqs=40)

    # Widths 16, 32, 64 for 40 sequences; the last is capped by the free blocks only when it must be.
    assert steps[-3:] == [16, 32, min(64, 200 // (-(-2 // block_size)))]
    assert engine.kv_cache.num_requests == 0
    assert engine.kv_cache.pool.num_free_blocks == free_before
    # The engine still answers the same tokens afterwards.
    again = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].token_ids
    assert again == expected


def test_a_failed_warm_up_step_frees_its_blocks_and_raises(tiny_checkpoints):
    """A warm-up step that fails (say, out of memory) stops start-up with its error and leaks no block."""
    llm = LLM(str(tiny_checkpoints["llama"]), dtype="float32", num_kv_blocks=200, max_model_len=128)
    engine = llm.engine
    free_before = engine.kv_cache.pool.num_free_blocks

    def fail(step, **kw):
        raise RuntimeError("CUDA out of memory (simulated)")

    engine.runner.execute = fail
    with pytest.raises(RuntimeError, match="out of memory"):
        warm_up_prompt_steps(engine.runner, engine.kv_cache, max_num_seqs=40)
    assert engine.kv_cache.num_requests == 0
    assert engine.kv_cache.pool.num_free_blocks == free_before


def test_logits_warm_up_runs_every_row_count_without_changing_outputs(tiny_checkpoints):
    llm = LLM(str(tiny_checkpoints["llama"]), dtype="float32", num_kv_blocks=64, max_model_len=64)
    engine = llm.engine
    prompt = [5, 6, 7, 8, 9]
    expected = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].token_ids
    rows: list[int] = []
    compute_logits = engine.runner.model.compute_logits
    engine.runner.model.compute_logits = lambda hidden: (rows.append(hidden.shape[0]), compute_logits(hidden))[1]

    warm_up_logits(engine.runner, max_rows=12)

    assert rows == list(range(1, 13))
    engine.runner.model.compute_logits = compute_logits
    again = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].token_ids
    assert again == expected

