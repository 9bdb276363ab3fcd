"""Compile the Triton kernels' per-step variants at start-up, before the first request meets them.

Triton compiles a kernel once per combination of its ``constexpr`` arguments.
Most of those are fixed by the model. One that a step chooses is the width of
the prefill attention kernel's scan over the step's sequences: the next power
of two (at least 16) of the sequence count. Compiling takes a second or two,
and the step that meets a new width waits for it with every request in it. On
a fresh GPU machine that showed up as TTFT tails of 1.8-2.6 s in a 2 req/s run
(bench/RESULTS.md). Decode-only steps are covered already: CUDA graph capture
compiles their kernels.

So the engine runs one tiny prompt step per width at start: sequences of two
tokens each, freed at once. With blocks of 16 tokens or more a two-token
prompt fills no block, so nothing enters the prefix cache; with smaller
blocks its one or two cached blocks hold the model's true KV for that prefix.

The LM head is the other shape a step chooses: its GEMM has one row per
sampling sequence, any count up to ``max_num_seqs``, and cuBLAS picks a
kernel by that count. CUDA loads a kernel's module the first time it runs
(torch's default lazy loading), so a step meeting a new row count can wait on
that load. On the GPU bench, prompt steps mixing in a growing number of
decodes held the host 73-116 ms each in cuBLAS calls before this warm-up and
23-28 ms after (bench/RESULTS.md; the loading is inferred, not traced). One
LM-head product per row count at start costs a fraction of a second on a GPU.
"""

from __future__ import annotations

import time

import torch

from services.engine.kv_cache_manager import KVCacheManager
from services.engine.model_runner import ModelRunner
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledChunk, SchedulerOutput

WARMUP_PROMPT = [1, 2]
SMALLEST_WIDTH = 16


def prompt_step_widths(max_num_seqs: int) -> list[int]:
    """Sequence counts that meet every scan width a step of up to ``max_num_seqs`` sequences can use."""
    widths = [SMALLEST_WIDTH]
    while widths[-1] < max_num_seqs:
        widths.append(widths[-1] * 2)
    return widths


def warm_up_prompt_steps(runner: ModelRunner, kv_cache: KVCacheManager, max_num_seqs: int) -> float:
    """Run one small prompt step per scan width; returns the seconds it took."""
    started = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=1)
    blocks_per_prompt = -(-len(WARMUP_PROMPT) // kv_cache.block_size)
    for width in prompt_step_widths(max_num_seqs):
        count = min(width, kv_cache.pool.num_free_blocks // blocks_per_prompt)
        requests = [Request(f"warmup-{width}-{i}", list(WARMUP_PROMPT), params) for i in range(count)]
        try:
            chunks = [ScheduledChunk(r, 0, len(WARMUP_PROMPT), kv_cache.allocate(r, len(WARMUP_PROMPT)))
                      for r in requests]
            runner.execute(SchedulerOutput(chunks=chunks))
        finally:
            for request in requests:
                kv_cache.free(request)
    return time.perf_counter() - started


def warm_up_logits(runner: ModelRunner, max_rows: int) -> float:
    """Run the LM head once for every row count from 1 to ``max_rows``; returns the seconds it took."""
    started = time.perf_counter()
    model = runner.model
    weight = model.lm_head.weight
    hidden = torch.zeros(max_rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    with torch.inference_mode():
        for rows in range(1, max_rows + 1):
            model.compute_logits(hidden[:rows])
    if weight.device.type == "cuda":
        torch.cuda.synchronize(weight.device)
    return time.perf_counter() - started
