"""Prompt-step microbenchmark: one step of N whole prompts through the engine's runner.

Reports the step time and the rate of useful arithmetic against a large bf16
matrix product measured in the same run: linear layers at 2 FLOPs per weight
per token (the LM head only for the rows that sample), causal attention at
2 * L^2 * head_dim FLOPs per query head per layer. ``--profile`` prints the GPU
time per kernel.

    python -m bench.prompt_step [--prompts 8] [--prompt-len 1000] [--profile] [--blas cublaslt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import triton.testing

from bench.common import emit
from bench.decode_step import print_kernel_profile
from bench.real_shapes import write_model_folder
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledChunk, SchedulerOutput


def matmul_tflops(size: int = 8192) -> float:
    """Rate of a large bf16 product on random data: the compute ceiling of this run."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    return 2 * size**3 / ms / 1e9


def prompt_chunks(engine: LLMEngine, prompts: int, prompt_len: int) -> list[ScheduledChunk]:
    chunks = []
    for i in range(prompts):
        request = Request(f"p{i}", [7 + i] * prompt_len, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        block_ids = engine.kv_cache.allocate(request, prompt_len)
        chunks.append(ScheduledChunk(request, 0, prompt_len, block_ids))
    return chunks


def step_flops(engine: LLMEngine, prompts: int, prompt_len: int) -> float:
    model = engine.runner.model
    shape = model.shape
    head = model.lm_head.weight.numel()
    layer_weights = sum(p.numel() for p in model.layers.parameters() if p.dim() == 2)
    linear = 2 * layer_weights * prompts * prompt_len + 2 * head * prompts
    attention = 2 * prompt_len**2 * shape.head_dim * shape.num_heads * shape.num_layers * prompts
    return float(linear + attention)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--blas", choices=["cublas", "cublaslt"], default=None)
    args = parser.parse_args()
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    folder = write_model_folder(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    blocks = args.prompts * -(-args.prompt_len // 16) + 16
    engine = LLMEngine(EngineConfig(model=str(folder), load_format="dummy", dtype="bfloat16", device="cuda",
                                    max_model_len=args.prompt_len + 64, num_kv_blocks=blocks,
                                    max_num_batched_tokens=max(8192, args.prompts * args.prompt_len),
                                    enable_prefix_caching=False))
    step = SchedulerOutput(chunks=prompt_chunks(engine, args.prompts, args.prompt_len))
    peak = matmul_tflops()
    ms = float(triton.testing.do_bench(lambda: engine.runner.execute(step), warmup=200, rep=2000,
                                       return_mode="median"))
    tflops = step_flops(engine, args.prompts, args.prompt_len) / ms / 1e9
    if args.profile:
        print_kernel_profile(lambda: engine.runner.execute(step), f"{args.prompts} x {args.prompt_len} prompt", 5)
    emit("prompt_step", model="Llama-3.1-8B shape, random bf16", prompts=args.prompts, prompt_len=args.prompt_len,
         ms=round(ms, 2), tflops=round(tflops, 1), matmul_tflops=round(peak, 1),
         fraction_of_matmul=round(tflops / peak, 3), blas=str(torch.backends.cuda.preferred_blas_library()))


if __name__ == "__main__":
    main()
