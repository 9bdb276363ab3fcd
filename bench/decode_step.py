"""Decode-step time against the roofline, on a GPU, for a Llama-3.1-8B-shaped model in bf16.

For batch sizes 1, 64 and 256 with ``--context`` tokens already in the paged
cache (random KV), time one decode step: the full runner path (inputs built on
the host, forward, greedy sampling, token ids back on the host) replaying the
step's CUDA graph, the same step forced eager, and the forward plus logits
alone, both ways. ``overlap_ms`` is the per-step time of the engine's loop
with overlap scheduling: step N+1 launched before step N is collected, so the
host's input building and sampling bookkeeping hide behind the GPU. The roofline is (weight bytes + KV bytes read) / bandwidth,
where bandwidth is a device-to-device copy measured in the same run.
``--profile`` also prints the GPU time per kernel of the graphed step.

    python -m bench.decode_step [--batches 1 64 256] [--context 1024] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton.testing

from bench.common import emit
from bench.real_shapes import write_model_folder
from kernels.triton import skinny_linear
from services.engine import graph_blas
from services.engine.batch_inputs import build_batch_inputs
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledChunk, SchedulerOutput


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    src = torch.randn(1 << 30, dtype=torch.bfloat16, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms / 1e3)


def decode_chunks(engine: LLMEngine, batch: int, context: int) -> list[ScheduledChunk]:
    chunks = []
    for i in range(batch):
        request = Request(f"b{batch}-{i}", [7] * context, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        request.append_output_token(9)
        block_ids = engine.kv_cache.allocate(request, context + 1)
        request.num_computed_tokens = context
        chunks.append(ScheduledChunk(request, context, 1, block_ids))
    return chunks


def median_ms(fn: Callable[[], object]) -> float:
    return float(triton.testing.do_bench(fn, warmup=20, rep=200, return_mode="median"))


def overlapped_ms(runner, step: SchedulerOutput, steps: int = 100, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean step time when each launch precedes the previous collect."""
    def loop(n: int) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        previous = runner.launch(step)
        for _ in range(n):
            current = runner.launch(step)
            runner.collect(previous)
            previous = current
        runner.collect(previous)
        return (time.perf_counter() - started) * 1e3 / (n + 1)

    loop(10)  # warm-up
    return statistics.median(loop(steps) for _ in range(repeats))


def print_kernel_profile(fn: Callable[[], object], label: str, steps: int = 20) -> None:
    """GPU time per kernel over ``steps`` calls (kernels inside graph replays included)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    print(f"--- {label}: GPU time per kernel, {steps} steps ---")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))


def time_batch(engine: LLMEngine, batch: int, context: int, profile: bool) -> dict[str, float | bool]:
    """Step and forward times of one decode batch, graphed (when it fits a graph) and eager."""
    runner = engine.runner
    chunks = decode_chunks(engine, batch, context)
    step = SchedulerOutput(chunks=chunks)
    graph_steps = runner.num_graph_steps
    step_ms = median_ms(lambda: runner.execute(step))
    # Only a step that really replayed a graph reports cuda_graphs: true.
    graphed = runner.num_graph_steps > graph_steps
    eager_step_ms = median_ms(lambda: runner.execute(step, use_cuda_graphs=False))
    with torch.inference_mode():
        overlap_ms = overlapped_ms(runner, step)
    inputs = build_batch_inputs(chunks, engine.kv_cache.block_size, runner.device, slot_views=False)

    def forward() -> torch.Tensor:
        hidden = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.meta)
        return runner.model.compute_logits(hidden[inputs.sample_token_index])

    def graph_forward() -> torch.Tensor:
        assert runner.decode_graphs is not None
        return runner.model.compute_logits(runner.decode_graphs.run(chunks))

    with torch.inference_mode():
        forward_ms = median_ms(forward)
        graph_forward_ms = median_ms(graph_forward) if graphed else forward_ms
    if profile:
        print_kernel_profile(lambda: runner.execute(step), f"batch {batch}, cuda_graphs={graphed}")
    for chunk in chunks:
        engine.kv_cache.free(chunk.request)
    return {"ms": step_ms, "overlap_ms": overlap_ms, "forward_ms": graph_forward_ms, "eager_ms": eager_step_ms,
            "eager_forward_ms": forward_ms, "cuda_graphs": graphed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--blas", choices=["cublas", "cublaslt"], default=None,
                        help="torch's preferred BLAS library for the GEMMs (default: torch's choice)")
    parser.add_argument("--skinny-max-rows", type=int, default=None,
                        help="rows up to which linears use the skinny Triton kernel (0: cuBLAS only)")
    parser.add_argument("--cublaslt-max-rows", type=int, default=None,
                        help="graph sizes up to which decode graphs capture cuBLASLt GEMMs (0: never)")
    args = parser.parse_args()
    if args.skinny_max_rows is not None:
        skinny_linear.MAX_ROWS = args.skinny_max_rows
    if args.cublaslt_max_rows is not None:
        graph_blas.CUBLASLT_MAX_ROWS = args.cublaslt_max_rows
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    folder = write_model_folder(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    blocks_needed = sum(-(-(args.context + 1) // 16) for _ in range(max(args.batches))) + 64
    engine = LLMEngine(EngineConfig(model=str(folder), load_format="dummy", dtype="bfloat16", device="cuda",
                                    max_model_len=args.context + 64, num_kv_blocks=blocks_needed,
                                    max_num_seqs=max(256, *args.batches),
                                    enable_prefix_caching=False))
    for key_cache, value_cache in engine.runner.kv_caches:
        key_cache.normal_()
        value_cache.normal_()
    bandwidth = copy_bandwidth()
    shape = engine.runner.model.shape
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    kv_token_bytes = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * 2
    graphs = engine.runner.decode_graphs
    capture = {}
    if graphs is not None:
        capture = {"capture_s": round(graphs.capture_seconds, 2), "graph_sizes": len(graphs.sizes),
                   "capture_mib": round(graphs.capture_bytes / 2**20, 1)}
    for batch in args.batches:
        t = time_batch(engine, batch, args.context, args.profile)
        roofline_ms = (weight_bytes + batch * (args.context + 1) * kv_token_bytes) / bandwidth * 1e3
        emit("decode_step", model="Llama-3.1-8B shape, random bf16", batch=batch, context=args.context,
             ms=round(t["ms"], 3), overlap_ms=round(t["overlap_ms"], 3), forward_ms=round(t["forward_ms"], 3),
             eager_ms=round(t["eager_ms"], 3), eager_forward_ms=round(t["eager_forward_ms"], 3),
             roofline_ms=round(roofline_ms, 3), ratio_to_roofline=round(t["ms"] / roofline_ms, 3),
             overlap_ratio_to_roofline=round(t["overlap_ms"] / roofline_ms, 3),
             eager_ratio_to_roofline=round(t["eager_ms"] / roofline_ms, 3),
             copy_bandwidth_gb_s=round(bandwidth / 1e9, 1), kernels=engine.runner.kernel_backend,
             cuda_graphs=t["cuda_graphs"], blas=str(torch.backends.cuda.preferred_blas_library()),
             skinny_max_rows=skinny_linear.MAX_ROWS, cublaslt_max_rows=graph_blas.CUBLASLT_MAX_ROWS, **capture)


if __name__ == "__main__":
    main()
