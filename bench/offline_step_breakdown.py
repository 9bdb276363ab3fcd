"""Where offline generation time goes: prompt (mixed) steps, decode steps, and host work around them.

Same model and prompts as ``bench.gpu_offline_throughput``. After one warm-up
run that compiles every kernel variant, runs the workload with CUDA graphs off
and on, alternating, and prints one JSON line per run: seconds in steps that
carry prompt tokens, seconds and ms/step in decode-only steps (runner time,
i.e. inputs, forward, sampling and the token sync), and the rest of the wall
time (scheduling, output processing), all of it host work the GPU waits on.

    python -m bench.offline_step_breakdown [--isl 1000] [--osl 300] [--num-prompts 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import emit
from bench.real_shapes import write_model_folder
from services.engine.decode_inputs import is_decode_only
from services.engine.model_runner import RunnerOutput
from services.engine.scheduler import SchedulerOutput


def timed_execute(
    execute: Callable[..., RunnerOutput], totals: dict[str, list[float]]
) -> Callable[..., RunnerOutput]:
    """``execute`` that adds its wall time to ``totals['decode' | 'mixed']`` = [steps, seconds]."""

    def wrapper(step: SchedulerOutput, *args: Any, **kwargs: Any) -> RunnerOutput:
        started = time.perf_counter()
        out = execute(step, *args, **kwargs)
        entry = totals["decode" if is_decode_only(step.chunks) else "mixed"]
        entry[0] += 1
        entry[1] += time.perf_counter() - started
        return out

    return wrapper


def run_once(folder: Path, prompts: list[list[int]], osl: int, cuda_graphs: bool, **engine_args: Any) -> dict:
    from tandem import LLM, SamplingParams

    llm = LLM(model=str(folder), max_model_len=len(prompts[0]) + osl + 16, max_num_seqs=256,
              max_num_batched_tokens=8192, cuda_graphs=cuda_graphs, **engine_args)
    totals: dict[str, list[float]] = {"decode": [0, 0.0], "mixed": [0, 0.0]}
    runner = llm.engine.runner
    runner.execute = timed_execute(runner.execute, totals)  # type: ignore[method-assign]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=osl, ignore_eos=True))
    elapsed = time.perf_counter() - started
    (decode_steps, decode_s), (mixed_steps, mixed_s) = totals["decode"], totals["mixed"]
    outside_s = elapsed - decode_s - mixed_s
    record = {
        "cuda_graphs": cuda_graphs, "graph_steps": runner.num_graph_steps, "elapsed_s": round(elapsed, 3),
        "mixed_steps": mixed_steps, "mixed_s": round(mixed_s, 3),
        "decode_steps": decode_steps, "decode_s": round(decode_s, 3),
        "decode_ms_per_step": round(1e3 * decode_s / max(decode_steps, 1), 3),
        "outside_runner_s": round(outside_s, 3),
        "outside_runner_ms_per_step": round(1e3 * outside_s / max(decode_steps + mixed_steps, 1), 3),
    }
    del llm, runner
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isl", type=int, default=1000)
    parser.add_argument("--osl", type=int, default=300)
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = write_model_folder(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 128000) for _ in range(args.isl)] for _ in range(args.num_prompts)]
    engine_args = {"load_format": "dummy", "dtype": "bfloat16", "device": "cuda",
                   "kv_cache_memory_fraction": 0.6}
    run_once(folder, prompts, args.osl, True, **engine_args)  # compiles every kernel variant
    for _ in range(args.repeats):
        for cuda_graphs in (False, True):
            record = run_once(folder, prompts, args.osl, cuda_graphs, **engine_args)
            emit("offline_step_breakdown", model="Llama-3.1-8B shape, random bf16", isl=args.isl,
                 osl=args.osl, num_prompts=args.num_prompts, **record)


if __name__ == "__main__":
    main()
