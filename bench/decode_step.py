"""Decode-step time against the roofline, on a GPU, for a Llama-3.1-8B-shaped model in bf16.

For batch sizes 1, 64 and 256 with ``--context`` tokens already in the paged
cache (random KV), time one decode step: the full runner path (inputs built on
the host, forward, greedy sampling, token ids back on the host) and the model
forward alone. The roofline is (weight bytes + KV bytes read) / bandwidth,
where bandwidth is a device-to-device copy measured in the same run.

    python -m bench.decode_step [--batches 1 64 256] [--context 1024]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import triton.testing

from bench.common import emit
from bench.real_shapes import write_model_folder
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()
    folder = write_model_folder(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    blocks_needed = sum(-(-(args.context + 1) // 16) for _ in range(max(args.batches))) + 64
    engine = LLMEngine(EngineConfig(model=str(folder), load_format="dummy", dtype="bfloat16", device="cuda",
                                    max_model_len=args.context + 64, num_kv_blocks=blocks_needed,
                                    enable_prefix_caching=False))
    for key_cache, value_cache in engine.runner.kv_caches:
        key_cache.normal_()
        value_cache.normal_()
    bandwidth = copy_bandwidth()
    shape = engine.runner.model.shape
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    kv_token_bytes = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * 2
    for batch in args.batches:
        chunks = decode_chunks(engine, batch, args.context)
        step = SchedulerOutput(chunks=chunks)
        runner = engine.runner
        step_ms = triton.testing.do_bench(lambda: runner.execute(step), warmup=20, rep=200, return_mode="median")
        inputs = build_batch_inputs(chunks, engine.kv_cache.block_size, runner.device)

        def forward() -> torch.Tensor:
            hidden = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.meta)
            return runner.model.compute_logits(hidden[inputs.sample_token_index])

        with torch.inference_mode():
            forward_ms = triton.testing.do_bench(forward, warmup=20, rep=200, return_mode="median")
        kv_bytes = batch * (args.context + 1) * kv_token_bytes
        roofline_ms = (weight_bytes + kv_bytes) / bandwidth * 1e3
        emit("decode_step", model="Llama-3.1-8B shape, random bf16", batch=batch, context=args.context,
             ms=round(step_ms, 3), forward_ms=round(forward_ms, 3), roofline_ms=round(roofline_ms, 3),
             ratio_to_roofline=round(step_ms / roofline_ms, 3), copy_bandwidth_gb_s=round(bandwidth / 1e9, 1),
             kernels=runner.kernel_backend, cuda_graphs=False)
        for chunk in chunks:
            engine.kv_cache.free(chunk.request)


if __name__ == "__main__":
    main()
