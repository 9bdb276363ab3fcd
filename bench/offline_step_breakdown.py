"""Where offline generation time goes: the host's launch work, waits on the GPU, and the rest.

Same model and prompts as ``bench.gpu_offline_throughput``. After one warm-up
run that compiles every kernel variant, runs the workload with overlap
scheduling off and on (CUDA graphs on), alternating, and prints one JSON line
per run. The runner's two calls are timed apart: ``launch`` (building inputs
and queueing the forward and sampling: host work) and ``collect`` (the host
waiting for the step's token ids, split by decode-only and mixed steps). The
rest of the wall time is scheduling and output processing. Without overlap,
the GPU idles through launch and the rest; with it, those run while the GPU
computes the step launched before, and the waits absorb the GPU time.

    python -m bench.offline_step_breakdown [--isl 1000] [--osl 300] [--num-prompts 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import emit
from bench.real_shapes import write_model_folder
from bench.step_timeline import StepTimeline


def run_once(folder: Path, prompts: list[list[int]], osl: int, overlap: bool, **engine_args: Any) -> dict:
    from tandem import LLM, SamplingParams

    llm = LLM(model=str(folder), max_model_len=len(prompts[0]) + osl + 16,
              max_num_batched_tokens=8192, overlap_scheduling=overlap, **engine_args)
    timeline = StepTimeline()
    runner = llm.engine.runner
    runner.launch = timeline.wrap_launch(runner.launch)  # type: ignore[method-assign]
    runner.collect = timeline.wrap_collect(runner.collect)  # type: ignore[method-assign]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=osl, ignore_eos=True))
    elapsed = time.perf_counter() - started
    steps = timeline.steps
    launch_steps = len(steps)
    launch_s = sum(s.launch_ended - s.launch_began for s in steps)
    decode_steps = sum(s.decode_only for s in steps)
    decode_wait_s = sum(s.wait_s for s in steps if s.decode_only)
    mixed_steps = launch_steps - decode_steps
    mixed_wait_s = sum(s.wait_s for s in steps if not s.decode_only)
    rest_s = elapsed - launch_s - decode_wait_s - mixed_wait_s
    record = {
        "overlap_scheduling": overlap, "graph_steps": runner.num_graph_steps, "elapsed_s": round(elapsed, 3),
        "steps": launch_steps, "launch_s": round(launch_s, 3),
        "launch_ms_per_step": round(1e3 * launch_s / max(launch_steps, 1), 3),
        "mixed_steps": mixed_steps, "mixed_wait_s": round(mixed_wait_s, 3),
        "decode_steps": decode_steps, "decode_wait_s": round(decode_wait_s, 3),
        "decode_ms_per_step": round(1e3 * (elapsed - mixed_wait_s) / max(decode_steps, 1), 3),
        "rest_s": round(rest_s, 3), "rest_ms_per_step": round(1e3 * rest_s / max(launch_steps, 1), 3),
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
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=0.6)
    args = parser.parse_args()
    folder = write_model_folder(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 128000) for _ in range(args.isl)] for _ in range(args.num_prompts)]
    engine_args = {"load_format": "dummy", "dtype": "bfloat16", "device": "cuda",
                   "kv_cache_memory_fraction": args.kv_cache_memory_fraction, "max_num_seqs": args.max_num_seqs}
    run_once(folder, prompts, args.osl, True, **engine_args)  # compiles every kernel variant
    for _ in range(args.repeats):
        for overlap in (False, True):
            record = run_once(folder, prompts, args.osl, overlap, **engine_args)
            emit("offline_step_breakdown", model="Llama-3.1-8B shape, random bf16", isl=args.isl,
                 osl=args.osl, num_prompts=args.num_prompts, **record)


if __name__ == "__main__":
    main()
