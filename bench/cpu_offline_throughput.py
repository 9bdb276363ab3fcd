"""Offline throughput on CPU: tandem vs HF transformers ``generate``, same workload, same run.

Workload: 64 prompts x 64 greedy output tokens (EOS ignored) on the default
model (SmolLM2-135M-Instruct, dequantized to float32). HF runs the same
prompts as one left-padded batch of 64 with the same weights.

    python bench/cpu_offline_throughput.py [--num-prompts 64] [--output-len 64]

Prints one JSON line per system and one with the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import emit

TOPICS = [
    "the history of the printing press", "how volcanoes form", "the rules of chess", "photosynthesis",
    "the French revolution", "black holes", "how to bake bread", "the water cycle", "machine learning",
    "the Roman empire", "climate change", "the human heart", "jazz music", "the moon landing",
    "plate tectonics", "the stock market",
]
STYLES = [
    "Write a short paragraph about {}.",
    "Explain {} to a ten year old.",
    "List three surprising facts about {}.",
    "Summarize what is known about {} in plain words.",
]


def build_prompts(n: int) -> list[str]:
    return [STYLES[i % len(STYLES)].format(TOPICS[(i // len(STYLES) + i) % len(TOPICS)]) for i in range(n)]


def run_tandem(prompts: list[str], output_len: int) -> tuple[float, int, object]:
    from tandem import LLM, SamplingParams

    llm = LLM(dtype="float32", max_model_len=1024)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:4], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    return elapsed, produced, llm


def run_hf(llm: object, prompts: list[str], output_len: int) -> tuple[float, int]:
    """HF ``generate`` with the very weights tandem loaded (same dequantized GGUF tensors)."""
    from transformers import LlamaForCausalLM

    from services.engine.models.checkpoint import load_checkpoint
    from services.engine.models.default_model import default_model_path

    checkpoint = load_checkpoint(default_model_path())
    model = LlamaForCausalLM(checkpoint.hf_config)
    state = dict(checkpoint.iter_weights(torch.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied lm_head has no tensor of its own; anything else missing is a bug.
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.eval()
    tokenizer = llm.tokenizer  # type: ignore[attr-defined]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    kwargs = {"do_sample": False, "max_new_tokens": output_len, "eos_token_id": None, "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        model.generate(**tokenizer(prompts[:4], return_tensors="pt", padding=True), **{**kwargs, "max_new_tokens": 4})
        start = time.perf_counter()
        out = model.generate(**batch, **kwargs)
        elapsed = time.perf_counter() - start
    produced = int((out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0])
    return elapsed, produced


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    args = parser.parse_args()
    prompts = build_prompts(args.num_prompts)
    workload = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)", "dtype": "float32",
                "num_prompts": args.num_prompts, "output_len": args.output_len}

    t_elapsed, t_tokens, llm = run_tandem(prompts, args.output_len)
    tandem_tps = t_tokens / t_elapsed
    emit("cpu_offline_throughput", system="tandem", output_tok_per_s=round(tandem_tps, 1),
         elapsed_s=round(t_elapsed, 2), output_tokens=t_tokens, **workload)
    h_elapsed, h_tokens = run_hf(llm, prompts, args.output_len)
    hf_tps = h_tokens / h_elapsed
    emit("cpu_offline_throughput", system="hf_transformers", output_tok_per_s=round(hf_tps, 1),
         elapsed_s=round(h_elapsed, 2), output_tokens=h_tokens, batch_size=args.num_prompts, **workload)
    emit("cpu_offline_throughput", system="ratio", baseline="hf_transformers",
         tandem_over_hf=round(tandem_tps / hf_tps, 3), **workload)


if __name__ == "__main__":
    main()
