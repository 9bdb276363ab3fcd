"""Logprobs in OpenAI's two formats: the legacy completions lists and chat's per-token objects.

Token strings come from decoding each token id alone (as vLLM does); a token
that is only part of a multi-byte character decodes to U+FFFD, which is why
chat entries also carry the UTF-8 ``bytes``.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from services.gateway.responses import ChatTokenLogprob, CompletionLogprobs, TopLogprobEntry
from tandem.client_types import TokenLogprob

# Distinct token ids seen by one gateway are bounded by the vocabulary.
_CACHE_LIMIT = 1 << 18
# JSON has no -inf: a token the sampler ruled out (probability 0) reports this, as vLLM does.
MIN_LOGPROB = -9999.0


def finite(logprob: float) -> float:
    # Written as a comparison that NaN fails, so NaN reports MIN_LOGPROB too.
    if not logprob >= MIN_LOGPROB:
        return MIN_LOGPROB
    return logprob


class TokenTexts:
    """Token id -> text, decoded once per id."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[token_id] = text
        return text


def _top(entry: TokenLogprob, k: int) -> tuple:
    # ``top`` is sorted by rank; past the first k it may hold the chosen token
    # when that ranked below k, which OpenAI's top lists leave out.
    return entry.top[:k]


class CompletionLogprobsBuilder:
    """One completions choice's logprobs, built incrementally (text offsets continue across chunks)."""

    def __init__(self, texts: TokenTexts, k: int) -> None:
        self.texts = texts
        self.k = k
        self.offset = 0

    def build(self, token_ids: list[int], entries: list[TokenLogprob | None]) -> CompletionLogprobs:
        """Logprobs of ``token_ids``; an entry of None (the prompt's first token) has no logprob."""
        out = CompletionLogprobs()
        for token_id, entry in zip(token_ids, entries):
            token = self.texts.text(token_id)
            out.tokens.append(token)
            out.text_offset.append(self.offset)
            self.offset += len(token)
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(finite(entry.logprob))
            top: dict[str, float] = {}
            for alternative in _top(entry, self.k):
                # Keyed by text, two tokens can collide (partial UTF-8 both decode to U+FFFD): keep the likelier.
                top.setdefault(self.texts.text(alternative.token_id), finite(alternative.logprob))
            out.top_logprobs.append(top)
        return out


def chat_logprobs(texts: TokenTexts, entries: list[TokenLogprob], k: int) -> list[ChatTokenLogprob]:
    def top_entry(token_id: int, logprob: float) -> TopLogprobEntry:
        token = texts.text(token_id)
        return TopLogprobEntry(token=token, logprob=finite(logprob), bytes=list(token.encode("utf-8")))

    result = []
    for entry in entries:
        token = texts.text(entry.token_id)
        result.append(ChatTokenLogprob(
            token=token, logprob=finite(entry.logprob), bytes=list(token.encode("utf-8")),
            top_logprobs=[top_entry(t.token_id, t.logprob) for t in _top(entry, k)],
        ))
    return result
