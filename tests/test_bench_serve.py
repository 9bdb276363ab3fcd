"""The serving benchmark's own logic: dataset parsing, ShareGPT pre-sampling and the statistics it reports."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.serve import RequestResult, load_workload, percentiles, summarize
from bench.serve_workloads import (
    iter_conversations,
    random_requests,
    read_sampled,
    select_sharegpt,
    sharegpt_requests,
)
from bench.sharegpt_sample import sample, write_sample
from tests.tokenizer_fixtures import build_byte_level_tokenizer


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


class WordTokenizer:
    """One token per whitespace-separated word, so filter boundaries can be hit exactly."""

    def __len__(self) -> int:
        return 1000

    def encode(self, text: str) -> list[int]:
        return [len(word) % 1000 for word in text.split()]


def conversation(cid: str, prompt: str, reply: str, turns: int = 2) -> dict:
    turns_ = [{"from": "human", "value": prompt}, {"from": "gpt", "value": reply}][:turns]
    return {"id": cid, "conversations": turns_}


def write_truncated(path, elements: list[dict]) -> str:
    """``elements`` as a JSON array cut inside one more element, as the shipped file is cut."""
    text = json.dumps([*elements, conversation("cut", "never " * 10, "seen " * 10)], indent=1)
    path.write_text(text[: text.index('"id": "cut"') + 12])
    return str(path)


def words(n: int, word: str = "w") -> str:
    return " ".join([word] * n)


def test_sharegpt_selection_applies_vllm_filters_at_their_bounds(tmp_path):
    keep = {
        "min": conversation("min", words(4), words(4)),
        "max-prompt": conversation("max-prompt", words(1024), words(4)),
        "max-total": conversation("max-total", words(1000), words(1048)),
    }
    drop = [
        conversation("short-prompt", words(3), words(50)),
        conversation("short-reply", words(50), words(3)),
        conversation("long-prompt", words(1025), words(4)),
        conversation("long-total", words(1000), words(1049)),
        conversation("one-turn", words(50), words(50), turns=1),
    ]
    path = write_truncated(tmp_path / "sharegpt.json", list(keep.values()) + drop)
    pairs = select_sharegpt(WordTokenizer(), 100, seed=0, path=path)
    by_prompt = {p.prompt: p for p in pairs}
    assert sorted(by_prompt) == sorted(c["conversations"][0]["value"] for c in keep.values())
    assert by_prompt[words(1000)].output_len == 1048 and len(by_prompt[words(1024)].prompt_ids) == 1024


def sharegpt_like(tmp_path, count: int = 30) -> str:
    elements = [
        conversation(str(i), f"Question {i}: how are you? " * (1 + i % 3), "I'm fine, thanks! " * (2 + i))
        for i in range(count)
    ]
    elements.insert(7, conversation("tiny", "Hi", "Hello world, how are you doing today?"))
    elements.insert(13, conversation("huge", "The quick brown fox. " * 400, "ok ok ok ok ok"))
    return write_truncated(tmp_path / "sharegpt.json", elements)


def test_sample_is_deterministic_by_seed_and_tokenizes_the_selected_prompts(tmp_path):
    tokenizer = build_byte_level_tokenizer()
    path = sharegpt_like(tmp_path)
    first = sample(tokenizer, "test-bpe", 20, seed=3, path=path)
    assert first == sample(tokenizer, "test-bpe", 20, seed=3, path=path)
    assert first["requests"] != sample(tokenizer, "test-bpe", 20, seed=4, path=path)["requests"]
    assert first["num_prompts"] == 20 and first["tokenizer"] == "test-bpe" and first["seed"] == 3
    # Fewer asked for: a prefix of the same order.
    assert sample(tokenizer, "test-bpe", 5, seed=3, path=path)["requests"] == first["requests"][:5]
    # The same selection as the text workload, with the prompts' token ids.
    texts = sharegpt_requests(tokenizer, 20, seed=3, path=path)
    assert [r["prompt_token_ids"] for r in first["requests"]] == [tokenizer.encode(r.prompt) for r in texts]
    assert [r["output_len"] for r in first["requests"]] == [r.output_len for r in texts]
    # The too-short prompt, the too-long one and the cut element are never chosen.
    everything = sample(tokenizer, "test-bpe", 100, seed=0, path=path)
    assert everything["num_prompts"] == 30
    assert all(4 <= len(r["prompt_token_ids"]) <= 1024 for r in everything["requests"])
    assert tokenizer.encode("Hi") not in [r["prompt_token_ids"] for r in everything["requests"]]


def test_sampled_file_round_trips_to_token_id_requests(tmp_path):
    content = sample(build_byte_level_tokenizer(), "test-bpe", 12, seed=1, path=sharegpt_like(tmp_path))
    out = str(tmp_path / "data" / "sampled.json")
    assert write_sample(content, out) > 0
    requests = read_sampled(out).take(10)
    assert len(requests) == 10
    for request, entry in zip(requests, content["requests"]):
        assert request.prompt == entry["prompt_token_ids"] and all(isinstance(t, int) for t in request.prompt)
        assert request.prompt_len == len(request.prompt) and request.output_len == entry["output_len"]
    assert read_sampled(out).tokenizer == "test-bpe"
    with pytest.raises(ValueError):
        read_sampled(out).take(13)
    args = argparse.Namespace(dataset="sharegpt-sampled", dataset_path=out, num_prompts=12)
    loaded, info = load_workload(args)
    assert loaded == read_sampled(out).requests
    assert info["dataset"] == "sharegpt" and info["length_tokenizer"] == "test-bpe"
    assert info["prompt_format"] == "token_ids" and info["sample_seed"] == 1
