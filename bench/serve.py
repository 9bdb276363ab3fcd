"""Serving benchmark for the OpenAI gateway, in the manner of ``vllm bench serve``.

Sends requests to ``/v1/completions`` (streaming) with Poisson arrivals at
``--request-rate`` per second (``inf``: all at once), each asking for exactly
its output length (``ignore_eos``), and reports TTFT, TPOT, ITL and E2E at
p50/p90/p99, request and token throughput, and goodput: requests per second
that met both the TTFT and the TPOT SLO (DistServe's definition).

    python -m bench.serve --base-url http://127.0.0.1:8000 --dataset sharegpt --num-prompts 200 --request-rate 4
    python -m bench.serve --dataset random --input-len 512 --output-len 128 --num-prompts 100
    python -m bench.serve --dataset sharegpt-sampled --dataset-path FILE --num-prompts 1000

``sharegpt`` sends ShareGPT prompts as text, lengths counted with ``--tokenizer``;
``sharegpt-sampled`` sends the token-id prompts of a file written by
``bench.sharegpt_sample`` (for a server whose tokenizer cannot count real text).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx

from bench.common import emit
from bench.serve_workloads import (
    BenchRequest,
    load_length_tokenizer,
    random_requests,
    read_sampled,
    sharegpt_requests,
)


@dataclass
class RequestResult:
    ok: bool
    prompt_len: int
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot_s(self) -> float:
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


async def send(client: httpx.AsyncClient, model: str, request: BenchRequest, headers: dict) -> RequestResult:
    body = {"model": model, "prompt": request.prompt, "max_tokens": request.output_len, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    result = RequestResult(ok=False, prompt_len=request.prompt_len)
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                # A chunk per decode delta; its text may be empty (a token that
                # completes no character yet) but it still marks a token's arrival.
                if not chunk.get("choices"):
                    continue
                now = time.perf_counter()
                if result.ttft_s == 0.0:
                    result.ttft_s = now - start
                else:
                    result.itl_s.append(now - last)
                last = now
        result.e2e_s = time.perf_counter() - start
        result.ok = True
    except httpx.HTTPError as exc:
        result.error = repr(exc)
    return result


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"mean": statistics.fmean(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


async def run(args: argparse.Namespace, requests: list[BenchRequest]) -> list[RequestResult]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.max_concurrency, max_keepalive_connections=args.max_concurrency)
    rng = random.Random(args.seed)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=None, limits=limits) as client:
        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(send(client, args.model, request, headers)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        return await asyncio.gather(*tasks)


def summarize(results: list[RequestResult], elapsed: float, args: argparse.Namespace) -> dict:
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    good = [r for r in done if r.ttft_s * 1e3 <= args.slo_ttft_ms and r.tpot_s * 1e3 <= args.slo_tpot_ms]
    ms = lambda values: {k: round(v * 1e3, 2) for k, v in percentiles(values).items()}
    return {
        "completed": len(done), "failed": len(results) - len(done), "duration_s": round(elapsed, 2),
        "request_throughput": round(len(done) / elapsed, 3),
        "output_token_throughput": round(out_tokens / elapsed, 1),
        "total_token_throughput": round((out_tokens + sum(r.prompt_len for r in done)) / elapsed, 1),
        "ttft_ms": ms([r.ttft_s for r in done]), "tpot_ms": ms([r.tpot_s for r in done if r.output_tokens > 1]),
        "itl_ms": ms([gap for r in done for gap in r.itl_s]), "e2e_ms": ms([r.e2e_s for r in done]),
        "goodput_rps": round(len(good) / elapsed, 3), "slo_ttft_ms": args.slo_ttft_ms, "slo_tpot_ms": args.slo_tpot_ms,
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def load_workload(args: argparse.Namespace) -> tuple[list[BenchRequest], dict]:
    """The requests, and the fields that say where they came from (for the result line)."""
    if args.dataset == "sharegpt-sampled":
        if not args.dataset_path:
            raise SystemExit("--dataset sharegpt-sampled needs --dataset-path (see bench/sharegpt_sample.py)")
        sampled = read_sampled(args.dataset_path)
        requests = sampled.take(args.num_prompts)
        info = {
            "dataset": "sharegpt",
            "prompt_format": "token_ids",
            "length_tokenizer": sampled.tokenizer,
            "sample_seed": sampled.seed,
            "sample_file": os.path.basename(args.dataset_path),
        }
    elif args.dataset == "sharegpt":
        tokenizer, name = load_length_tokenizer(args.tokenizer)
        requests = sharegpt_requests(tokenizer, args.num_prompts, args.seed, args.dataset_path)
        info = {"dataset": "sharegpt", "prompt_format": "text", "length_tokenizer": name}
    else:
        requests = random_requests(args.num_prompts, args.input_len, args.output_len, args.vocab_size,
                                   args.range_ratio, args.seed)
        info = {"dataset": args.dataset}
    if requests:
        info["mean_prompt_len"] = round(statistics.fmean(r.prompt_len for r in requests), 1)
        info["mean_output_len"] = round(statistics.fmean(r.output_len for r in requests), 1)
    return requests, info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="default")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--tokenizer", default=None, help="checkpoint whose tokenizer counts ShareGPT lengths")
    parser.add_argument("--dataset", choices=["sharegpt", "sharegpt-sampled", "random"], default="random")
    parser.add_argument("--dataset-path", default=None, help="sharegpt: its JSON; sharegpt-sampled: the file")
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--range-ratio", type=float, default=0.0)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--request-rate", type=float, default=float("inf"))
    parser.add_argument("--max-concurrency", type=int, default=512)
    parser.add_argument("--slo-ttft-ms", type=float, default=500.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    requests, workload = load_workload(args)
    start = time.perf_counter()
    results = asyncio.run(run(args, requests))
    summary = summarize(results, time.perf_counter() - start, args)
    emit("serve", **workload, num_prompts=len(requests), request_rate=args.request_rate,
         base_url=args.base_url, **summary)


if __name__ == "__main__":
    main()
