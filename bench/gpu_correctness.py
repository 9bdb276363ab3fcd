"""Greedy output on the GPU against HF transformers, token for token (fp32) and close (bf16).

Builds the tiny random checkpoints the CPU suite uses, runs 8 prompts through
tandem on CUDA (with whatever kernel backend dispatch picks there) and through
HF ``generate`` one prompt at a time, and prints one JSON line per arch/dtype.

    python -m bench.gpu_correctness
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch

from bench.common import emit
from tests.fixtures.hf_oracle import make_prompts
from tests.fixtures.tiny_models import TINY_ARCHS, build_tiny_checkpoint


def hf_greedy_cuda(folder: Path, prompts: list[list[int]], new_tokens: int, dtype: torch.dtype) -> list[list[int]]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    model.generation_config = GenerationConfig()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device="cuda")
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
            out.append(gen[0, len(prompt):].tolist())
    return out


def main() -> None:
    from tandem import LLM, SamplingParams

    root = Path(tempfile.mkdtemp())
    for arch in TINY_ARCHS:
        folder = build_tiny_checkpoint(arch, root / arch)
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            llm = LLM(model=str(folder), dtype=dtype_name, device="cuda", num_kv_blocks=512, max_model_len=512,
                      max_num_batched_tokens=64)  # small budget: chunked prefill mixed with decodes
            prompts = make_prompts(llm.tokenizer, 8, random.Random(1), min_len=3, max_len=200)
            got = [o.outputs[0].token_ids for o in llm.generate(
                prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))]
            want = hf_greedy_cuda(folder, prompts, 16, dtype)
            exact = sum(g == w for g, w in zip(got, want))
            first = min(next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), 16) for g, w in zip(got, want))
            emit("gpu_greedy_vs_hf", arch=arch, dtype=dtype_name, prompts=len(prompts), exact_matches=exact,
                 min_matching_prefix=first, kernels=llm.engine.runner.kernel_backend)
            del llm


if __name__ == "__main__":
    main()
