"""The GPU timeline of steps inside an offline run: busy time, idle gaps, kernels, host time.

``bench.decode_step`` times one decode batch in isolation. The steps of a real
offline run also carry the scheduler, output processing, block tables that
grow one block at a time, and prompt chunks mixed with decodes. This runs the
offline workload of ``bench.gpu_offline_throughput`` (same engine settings,
overlap scheduling on, 384 prompts by default).

The first JSON line is the whole run's step timeline (:mod:`bench.step_timeline`):
the prompt phase and buckets of decode steps, each with its wall time per step
and its host parts. Each ``--window KIND:SKIP:STEPS`` then records steps
``SKIP..SKIP+STEPS-1`` of that kind (``decode``: decode-only, ``mixed``: with
prompt chunks) with the torch profiler, CUDA activity only, so no per-op host
events slow the host down, and prints a line with their wall time per step,
GPU busy time per step (the union of kernel and copy intervals), the idle gaps
and the top kernels. ``--host-profile`` prints a cProfile of the mixed steps'
launch calls. Without either, the timeline is undisturbed.

    python -m bench.offline_step_profile [--isl 1000] [--osl 600] [--num-prompts 384]
        [--window decode:500:10] [--window mixed:30:4] [--host-profile] [--trace-dir DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import emit
from bench.real_shapes import write_model_folder
from bench.run_diagnostics import GcPauses, compiled_triton_variants, new_variants
from bench.step_timeline import StepTimeline, summarize
from services.engine.decode_inputs import is_decode_only

_DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
_GAP_US = 5.0  # idle stretches shorter than this are launch latency inside a graph, not host stalls


@dataclass
class ProfileWindow:
    """Profiles the launches of one step kind ("decode" or "mixed") in ``[skip, skip + steps)``."""

    kind: str
    skip: int
    steps: int
    profiler: profile = field(default_factory=lambda: profile(activities=[ProfilerActivity.CUDA]))
    launches: int = 0  # of this kind so far
    state: str = "waiting"  # -> "recording" -> "done"
    wall_started_at: float = 0.0
    wall_ended_at: float = 0.0
    launch_s: float = 0.0
    wait_s: float = 0.0

    def wrap_launch(self, launch: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(step: Any, *args: Any, **kwargs: Any) -> Any:
            self._before_launch(("decode" if is_decode_only(step.chunks) else "mixed") == self.kind)
            began = time.perf_counter()
            out = launch(step, *args, **kwargs)
            if self.state == "recording":
                self.launch_s += time.perf_counter() - began
            return out

        return wrapped

    def _before_launch(self, of_kind: bool) -> None:
        # Wall time per step comes from the unprofiled steps just before the
        # window, where overlap runs undisturbed; the window itself starts and
        # ends on an idle GPU so that it holds exactly its own steps' kernels.
        if of_kind and self.launches == self.skip - self.steps:
            self.wall_started_at = time.perf_counter()
        if of_kind and self.launches == self.skip:
            self.wall_ended_at = time.perf_counter()
            torch.cuda.synchronize()
            self.profiler.start()
            self.state = "recording"
        elif self.state == "recording" and self.launches >= self.skip + self.steps:
            self.finish()
        self.launches += of_kind

    def finish(self) -> None:
        if self.state == "recording":
            torch.cuda.synchronize()
            self.profiler.stop()
            self.state = "done"

    def wrap_collect(self, collect: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            out = collect(*args, **kwargs)
            if self.state == "recording":
                self.wait_s += time.perf_counter() - began
            return out

        return wrapped


def device_intervals(trace_path: Path) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every kernel, copy and memset in a Chrome trace, by start."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    spans = [(e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
             if e.get("cat") in _DEVICE_CATEGORIES and "dur" in e]
    return sorted(spans)


def timeline_summary(spans: list[tuple[float, float, str]], steps: int) -> dict[str, Any]:
    """Busy (union) and idle time of the device spans, per step, and the top kernels' time per step."""
    busy = gaps = 0.0
    num_gaps = 0
    end = spans[0][0]
    for start, stop, _ in spans:
        if start > end:
            idle = start - end
            if idle >= _GAP_US:
                gaps += idle
                num_gaps += 1
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    per_kernel: dict[str, float] = {}
    for start, stop, name in spans:
        per_kernel[name] = per_kernel.get(name, 0.0) + stop - start
    top = sorted(per_kernel.items(), key=lambda item: -item[1])[:12]
    return {
        "span_ms_per_step": round((end - spans[0][0]) / 1e3 / steps, 3),
        "gpu_busy_ms_per_step": round(busy / 1e3 / steps, 3),
        "gpu_idle_ms_per_step": round(gaps / 1e3 / steps, 3),
        "idle_gaps_per_step": round(num_gaps / steps, 1),
        "top_kernels_ms_per_step": {name[:60]: round(us / 1e3 / steps, 3) for name, us in top},
    }


def parse_window(text: str) -> ProfileWindow:
    """``KIND:SKIP:STEPS``, e.g. ``decode:500:10`` or ``mixed:30:4``."""
    kind, skip, steps = text.split(":")
    if kind not in ("decode", "mixed") or not 0 < int(steps) <= int(skip):
        raise argparse.ArgumentTypeError(f"want decode|mixed:SKIP:STEPS with 0 < STEPS <= SKIP, got {text!r}")
    return ProfileWindow(kind, int(skip), int(steps))


def host_profiled(launch: Callable[..., Any], host: cProfile.Profile) -> Callable[..., Any]:
    """``launch`` with the host profiler on during mixed steps' launches only."""

    def wrapped(step: Any, *args: Any, **kwargs: Any) -> Any:
        if is_decode_only(step.chunks):
            return launch(step, *args, **kwargs)
        host.enable()
        try:
            return launch(step, *args, **kwargs)
        finally:
            host.disable()

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isl", type=int, default=1000)
    parser.add_argument("--osl", type=int, default=600)
    parser.add_argument("--num-prompts", type=int, default=384)
    parser.add_argument("--window", type=parse_window, action="append", default=[],
                        help="KIND:SKIP:STEPS, profile steps SKIP..SKIP+STEPS-1 of that kind (repeatable)")
    parser.add_argument("--host-profile", action="store_true",
                        help="print where the host spends mixed steps' launch calls (cProfile)")
    parser.add_argument("--max-num-seqs", type=int, default=384)
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=0.85)
    parser.add_argument("--trace-dir", type=Path, default=None, help="keep the Chrome traces here")
    args = parser.parse_args()
    from tandem import LLM, SamplingParams

    folder = write_model_folder(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    llm = LLM(model=str(folder), load_format="dummy", dtype="bfloat16", device="cuda",
              max_model_len=args.isl + args.osl + 16, kv_cache_memory_fraction=args.kv_cache_memory_fraction,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=8192)
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 128000) for _ in range(args.isl)] for _ in range(args.num_prompts)]
    # Warm-up on other prompts of the same shape, as bench.gpu_offline_throughput
    # does, so that every kernel variant is compiled before the clock starts.
    warmup = [[rng.randrange(2, 128000) for _ in range(args.isl)] for _ in prompts]
    llm.generate(warmup, SamplingParams(temperature=0, max_tokens=min(args.osl, 24), ignore_eos=True))
    torch.cuda.synchronize()
    timeline = StepTimeline()
    runner = llm.engine.runner
    launch, collect = timeline.wrap_launch(runner.launch), timeline.wrap_collect(runner.collect)
    host = cProfile.Profile() if args.host_profile else None
    if host is not None:
        launch = host_profiled(launch, host)
    for window in args.window:
        launch, collect = window.wrap_launch(launch), window.wrap_collect(collect)
    runner.launch, runner.collect = launch, collect  # type: ignore[method-assign]
    memory_before, variants_before = torch.cuda.memory_stats(), compiled_triton_variants()
    with GcPauses() as gc_pauses:
        started = time.perf_counter()
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.osl, ignore_eos=True))
        ended = time.perf_counter()
    memory_after, compiled_in_run = torch.cuda.memory_stats(), new_variants(variants_before, compiled_triton_variants())
    for name, keys in compiled_in_run.items():
        for key in keys:
            print(f"variant first used in the timed run: {name} {key}")
    common = {"model": "Llama-3.1-8B shape, random bf16", "isl": args.isl, "osl": args.osl,
              "num_prompts": args.num_prompts, "batch": min(args.num_prompts, args.max_num_seqs),
              "preemptions": llm.stats().num_preemptions}
    # Device allocations or retries during the run mean the caching allocator
    # went to the driver, whose frees synchronize the device.
    allocator = {key: memory_after.get(key, 0) - memory_before.get(key, 0)
                 for key in ("num_alloc_retries", "num_device_alloc", "num_device_free")}
    emit("offline_step_timeline", **common, elapsed_s=round(ended - started, 3),
         output_tok_per_s=round(args.osl * args.num_prompts / (ended - started), 1),
         profiled_windows=len(args.window), host_profile=args.host_profile, allocator=allocator,
         triton_variants_in_run={name: len(keys) for name, keys in compiled_in_run.items()},
         **gc_pauses.summary(),
         **summarize(timeline, ended))
    if host is not None:
        print("--- host time in mixed steps' launch calls (cProfile, by own time) ---")
        pstats.Stats(host).sort_stats("tottime").print_stats(25)
    trace_dir = args.trace_dir or Path(tempfile.mkdtemp())
    trace_dir.mkdir(parents=True, exist_ok=True)
    for window in args.window:
        window.finish()
        if window.launches <= window.skip:
            continue  # the run had too few steps of this kind
        trace = trace_dir / f"offline-{window.kind}-{args.isl}-{args.osl}-{window.skip}.json"
        window.profiler.export_chrome_trace(str(trace))
        summary = timeline_summary(device_intervals(trace), window.steps)
        emit("offline_step_profile", **common, kind=window.kind, skip=window.skip, steps=window.steps,
             wall_ms_per_step=round((window.wall_ended_at - window.wall_started_at) * 1e3 / window.steps, 3),
             launch_ms_per_step=round(window.launch_s * 1e3 / window.steps, 3),
             wait_ms_per_step=round(window.wait_s * 1e3 / window.steps, 3), **summary)


if __name__ == "__main__":
    main()
