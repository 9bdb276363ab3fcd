"""Offline throughput on a GPU: tandem vs HF transformers ``generate``, same prompts, same run.

A Llama-3.1-8B-shaped model with random bf16 weights (built on the GPU). Each
workload is ``--num-prompts`` random prompts of ``isl`` tokens, ``osl`` greedy
output tokens each, EOS ignored. HF runs the same prompts in batches of
``--hf-batch`` (128 by default: the batch the issue quotes HF's 2.2k tok/s at).

    python -m bench.gpu_offline_throughput [--workloads 128/128 512/128 1000/1000] [--num-prompts 128]
        [--no-cuda-graphs] [--hf-max-isl-plus-osl 0] [--compare-sequential]
        [--max-num-seqs 256] [--kv-cache-memory-fraction 0.6]

``--compare-sequential`` also times tandem with overlap scheduling off (each
step collected before the next is scheduled), on the same prompts in the same run.
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from pathlib import Path

import torch

from bench.common import emit
from bench.real_shapes import LLAMA_31_8B, write_model_folder


def run_tandem(
    folder: Path, prompts: list[list[int]], osl: int, max_len: int, cuda_graphs: bool,
    overlap: bool = True, max_num_seqs: int = 256, kv_fraction: float = 0.6,
) -> tuple[float, float, dict]:
    """Seconds to generate, MiB the CUDA graphs took at start-up (0 when off), and KV-pool facts.

    The KV facts matter when two engines run one after the other in this
    process: a second engine that found less free memory may preempt.
    """
    from tandem import LLM, SamplingParams

    llm = LLM(model=str(folder), load_format="dummy", dtype="bfloat16", device="cuda", max_model_len=max_len,
              kv_cache_memory_fraction=kv_fraction, max_num_seqs=max_num_seqs, max_num_batched_tokens=8192,
              cuda_graphs=cuda_graphs, overlap_scheduling=overlap)
    # Warm-up of the workload's shape on other random prompts (no prefix-cache
    # hits later): its prefill steps mix as many sequences as the timed run's,
    # so every kernel variant is compiled before the clock starts.
    rng = random.Random(1)
    warmup = [[rng.randrange(2, 128000) for _ in range(len(prompts[0]))] for _ in prompts]
    llm.generate(warmup, SamplingParams(temperature=0, max_tokens=min(osl, 24), ignore_eos=True))
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=osl, ignore_eos=True))
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == osl for o in outputs)
    graphs = llm.engine.runner.decode_graphs
    capture_mib = graphs.capture_bytes / 2**20 if graphs is not None else 0.0
    stats = llm.stats()
    kv = {"kv_blocks": stats.num_total_blocks, "preemptions": stats.num_preemptions}
    del llm, graphs
    gc.collect()
    torch.cuda.empty_cache()
    return elapsed, capture_mib, kv


def run_hf(prompts: list[list[int]], osl: int, batch: int) -> float:
    """Seconds for HF ``generate`` over all prompts, ``batch`` at a time."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{k: v for k, v in LLAMA_31_8B.items() if k not in ("architectures", "model_type")})
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ids = torch.tensor(prompts, device="cuda")
    kwargs = {"do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(ids[:2], max_new_tokens=4, attention_mask=torch.ones_like(ids[:2]), **kwargs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, len(prompts), batch):
            part = ids[first : first + batch]
            out = model.generate(part, max_new_tokens=osl, attention_mask=torch.ones_like(part), **kwargs)
            assert out.shape[1] == ids.shape[1] + osl
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workloads", nargs="+", default=["128/128", "512/128", "1000/1000"])
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--hf-max-isl-plus-osl", type=int, default=700, help="skip HF beyond this length")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run tandem's decode steps eagerly")
    parser.add_argument("--compare-sequential", action="store_true", help="also run with overlap scheduling off")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--hf-batch", type=int, default=128, help="HF generate runs the prompts this many at a time")
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=0.6)
    args = parser.parse_args()
    folder = write_model_folder(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    rng = random.Random(0)
    for workload in args.workloads:
        isl, osl = (int(x) for x in workload.split("/"))
        prompts = [[rng.randrange(2, 128000) for _ in range(isl)] for _ in range(args.num_prompts)]
        tokens = osl * len(prompts)
        engine = {"cuda_graphs": not args.no_cuda_graphs, "max_num_seqs": args.max_num_seqs,
                      "kv_fraction": args.kv_cache_memory_fraction}
        t_elapsed, capture_mib, kv = run_tandem(folder, prompts, osl, isl + osl + 16, **engine)
        record = dict(model="Llama-3.1-8B shape, random bf16", isl=isl, osl=osl, num_prompts=len(prompts),
                      output_tok_per_s=round(tokens / t_elapsed, 1), elapsed_s=round(t_elapsed, 2),
                      cuda_graphs=not args.no_cuda_graphs, overlap_scheduling=True, max_num_seqs=args.max_num_seqs,
                      graph_capture_mib=round(capture_mib, 1), **kv)
        if args.compare_sequential:
            s_elapsed, _, s_kv = run_tandem(folder, prompts, osl, isl + osl + 16, overlap=False, **engine)
            record.update(sequential_output_tok_per_s=round(tokens / s_elapsed, 1),
                          overlap_speedup=round(s_elapsed / t_elapsed, 3),
                          **{f"sequential_{k}": v for k, v in s_kv.items()})
        if isl + osl <= args.hf_max_isl_plus_osl:
            h_elapsed = run_hf(prompts, osl, args.hf_batch)
            record.update(hf_output_tok_per_s=round(tokens / h_elapsed, 1), hf_batch=min(args.hf_batch, len(prompts)),
                          ratio_to_hf=round(h_elapsed / t_elapsed, 2))
        emit("offline_throughput", **record)


if __name__ == "__main__":
    main()
