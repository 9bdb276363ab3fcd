"""Few-row linear layers at Llama-3.1-8B shapes: the skinny Triton kernel against cuBLAS.

Each shape is timed as a decode step meets it: weights read from HBM, not L2
(a CUDA graph cycles through enough weight copies to overflow the cache), calls
back to back (no launch gaps). ``fraction`` is weight bytes per second over a
device-to-device copy measured in the same run. The gated rows compare the fused
``silu(gate) * up`` kernel with cuBLAS followed by the SiLU-and-mul kernel.

    python -m bench.skinny_linear [--rows 1 2 4 8 16 32] [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from triton.runtime.errors import OutOfResources

from bench.attention_bandwidth import copy_bandwidth_gbps
from bench.common import emit
from kernels.triton.activation import silu_and_mul
from kernels.triton.skinny_linear import SkinnyConfig, skinny_config, skinny_linear

# (name, output features N, depth K, gated): the projections of one Llama-3.1-8B layer, and the LM head.
SHAPES = [("qkv", 6144, 4096, False), ("o", 4096, 4096, False), ("gate_up", 14336, 4096, True),
          ("down", 4096, 14336, False), ("lm_head", 128256, 4096, False)]
CACHE_FLUSH_BYTES = 512 << 20


def graph_ms(calls: list[Callable[[], object]], rep: int = 50) -> float:
    """Median per-call time of ``calls`` replayed back to back in one CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for call in calls:  # warm-up: compiles kernels, picks cuBLAS algorithms
            call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for call in calls:
            call()
    times = []
    for _ in range(rep):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2] / len(calls)


def cublas_call(x: torch.Tensor, weight: torch.Tensor, gated: bool) -> torch.Tensor:
    return silu_and_mul(F.linear(x, weight)) if gated else F.linear(x, weight)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 32, 48, 64])
    parser.add_argument("--sweep", action="store_true", help="also time tile settings around the rule")
    args = parser.parse_args()
    torch.manual_seed(0)
    copy_gbps = copy_bandwidth_gbps()
    emit("copy_bandwidth", gbps=round(copy_gbps, 1))
    for name, features, depth, gated in SHAPES:
        out_rows = 2 * features if gated else features
        weight_bytes = out_rows * depth * 2
        copies = max(2, -(-CACHE_FLUSH_BYTES // weight_bytes))
        weights = [torch.randn(out_rows, depth, device="cuda").div_(depth**0.5).bfloat16() for _ in range(copies)]
        for rows in args.rows:
            x = torch.randn(rows, depth, device="cuda").bfloat16()
            want = cublas_call(x.float(), weights[0].float(), gated).bfloat16()
            got = skinny_linear(x, weights[0], gated=gated)
            err = float((got.float() - want.float()).norm() / want.float().norm())
            variants: list[tuple[str, SkinnyConfig | None]] = [("cublas", None),
                                                               ("skinny", skinny_config(features, gated))]
            if args.sweep:
                variants += [("sweep", SkinnyConfig(bn, bk, w, st)) for bn, bk, w, st in itertools.product(
                    [16, 32, 64], [128, 256, 512], [4, 8], [3, 4, 5])]
            for variant, config in variants:
                if config is None:
                    calls = [lambda w=w, x=x, g=gated: cublas_call(x, w, g) for w in weights]
                else:
                    calls = [lambda w=w, x=x, g=gated, c=config: skinny_linear(x, w, gated=g, config=c)
                             for w in weights]
                try:
                    ms = graph_ms(calls)
                except OutOfResources as error:  # a tile setting the chip cannot hold (shared memory)
                    emit("skinny_linear", shape=name, rows=rows, variant=variant, config=str(config),
                         error=type(error).__name__)
                    continue
                emit("skinny_linear", shape=name, features=features, depth=depth, gated=gated, rows=rows,
                     variant=variant, config=None if config is None else vars(config), us=round(ms * 1e3, 2),
                     fraction=round(weight_bytes / ms / 1e6 / copy_gbps, 3), rel_err=round(err, 5))
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
