"""The serving benchmark's own logic: dataset parsing and the statistics it reports."""

from __future__ import annotations

import argparse
import json

from bench.serve import RequestResult, percentiles, summarize
from bench.serve_workloads import iter_conversations, random_requests


def test_truncated_dataset_keeps_every_complete_element(tmp_path):
    elements = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"}]} for i in range(5)]
    text = json.dumps(elements, indent=1)
    cut = text.index('"id": "4"')  # cut inside the last element, as the shipped file is cut
    path = tmp_path / "cut.json"
    path.write_text(text[:cut])
    assert [e["id"] for e in iter_conversations(str(path))] == ["0", "1", "2", "3"]


def test_random_requests_respect_lengths():
    requests = random_requests(20, 64, 16, vocab_size=1000, range_ratio=0.5, seed=1)
    assert all(32 <= r.prompt_len <= 64 and len(r.prompt) == r.prompt_len for r in requests)
    assert all(8 <= r.output_len <= 16 for r in requests)


def test_summary_counts_goodput_against_both_slos():
    fast = RequestResult(ok=True, prompt_len=10, output_tokens=11, ttft_s=0.1, e2e_s=0.6, itl_s=[0.05] * 10)
    slow_first = RequestResult(ok=True, prompt_len=10, output_tokens=11, ttft_s=2.0, e2e_s=2.5, itl_s=[0.05] * 10)
    slow_tokens = RequestResult(ok=True, prompt_len=10, output_tokens=11, ttft_s=0.1, e2e_s=5.1, itl_s=[0.5] * 10)
    failed = RequestResult(ok=False, prompt_len=10, error="HTTP 503")
    args = argparse.Namespace(slo_ttft_ms=500.0, slo_tpot_ms=100.0)
    summary = summarize([fast, slow_first, slow_tokens, failed], elapsed=2.0, args=args)
    assert summary["completed"] == 3 and summary["failed"] == 1
    assert summary["goodput_rps"] == 0.5  # only `fast` met both SLOs, over 2 s
    assert summary["tpot_ms"]["p50"] == 50.0
    assert summary["output_token_throughput"] == 16.5
    assert percentiles([1.0, 2.0, 3.0, 4.0])["p50"] == 3.0
