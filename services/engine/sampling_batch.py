"""Per-row sampling parameters of one step's batch, gathered into tensors.

Built once per step from the requests that will sample a token, in the row
order of the logits. Optional features (top-k, top-p, min-p, penalties,
min_tokens, logprobs) leave their tensors ``None`` when no row uses them, so
the sampler skips that work entirely and an all-greedy batch is one argmax.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from services.engine.request import Request

# Temperatures below this are treated as greedy: dividing logits by something
# this small overflows float32 and the distribution is one-hot anyway.
GREEDY_TEMPERATURE_EPS = 1e-5


@dataclass
class SamplingBatch:
    num_rows: int
    vocab_size: int
    device: torch.device
    # Every row takes the argmax (temperature 0, or top_k == 1).
    all_greedy: bool
    # Row indices (Python and [R] tensor) of the rows that draw at random.
    random_rows: list[int]
    random_row_index: torch.Tensor | None
    # [B] float32; 1.0 on greedy rows so dividing by it is harmless.
    temperature: torch.Tensor
    # [B] int64, 0 = off; None when no random row limits top-k.
    top_k: torch.Tensor | None
    # Largest top-k of a random row, kept on the host so no device sync is needed.
    max_top_k: int
    # Every random row has a top-k: top-p then only needs to look at max_top_k candidates.
    top_k_on_every_random_row: bool
    # [B] float32; None when every row has top_p == 1 / min_p == 0.
    top_p: torch.Tensor | None
    min_p: torch.Tensor | None
    # [B] float32 each; None when no row uses any penalty.
    repetition_penalty: torch.Tensor | None
    presence_penalty: torch.Tensor | None
    frequency_penalty: torch.Tensor | None
    # [B, V] bool: token occurs in the row's prompt (repetition penalty only).
    prompt_token_mask: torch.Tensor | None
    # [B, V] float32: occurrences of each token in the row's output so far.
    output_token_counts: torch.Tensor | None
    # Parallel [N] int64 tensors: (row, token) pairs banned by min_tokens.
    min_tokens_rows: torch.Tensor | None
    min_tokens_token_ids: torch.Tensor | None
    # Per row: the request's own RNG, or None to use the sampler's shared one.
    generators: list[torch.Generator | None]
    # Per row: how many top logprobs to return (0 = only the sampled token's), None = no logprobs.
    num_logprobs: list[int | None]
    max_num_logprobs: int | None

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty is not None

    @property
    def is_plain_greedy(self) -> bool:
        """Nothing but an argmax of the raw logits is needed."""
        return (
            self.all_greedy
            and not self.needs_penalties
            and self.min_tokens_rows is None
            and self.max_num_logprobs is None
        )

    @classmethod
    def from_requests(cls, requests: list[Request], vocab_size: int, device: torch.device) -> SamplingBatch:
        params = [r.sampling_params for r in requests]
        greedy_rows = [p.temperature < GREEDY_TEMPERATURE_EPS or p.top_k == 1 for p in params]
        random_rows = [i for i, greedy in enumerate(greedy_rows) if not greedy]
        # Filters are only meaningful for rows that sample at random.
        random_top_ks = [params[i].top_k for i in random_rows if 0 < params[i].top_k < vocab_size]
        uses_top_p = any(params[i].top_p < 1.0 for i in random_rows)
        uses_min_p = any(params[i].min_p > 0.0 for i in random_rows)

        def row_tensor(values: list[float] | list[int] | list[bool], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        num_logprobs = [p.logprobs for p in params]
        requested = [n for n in num_logprobs if n is not None]
        penalties = _build_penalties(requests, vocab_size, device)
        min_tokens_rows, min_tokens_token_ids = _build_min_tokens_ban(requests, device)
        return cls(
            num_rows=len(requests),
            vocab_size=vocab_size,
            device=device,
            all_greedy=not random_rows,
            random_rows=random_rows,
            random_row_index=row_tensor(random_rows, torch.int64) if random_rows else None,
            temperature=row_tensor(
                [1.0 if greedy else p.temperature for p, greedy in zip(params, greedy_rows)], torch.float32
            ),
            top_k=row_tensor([p.top_k if 0 < p.top_k < vocab_size else 0 for p in params], torch.int64)
            if random_top_ks
            else None,
            max_top_k=max(random_top_ks, default=0),
            top_k_on_every_random_row=bool(random_rows) and len(random_top_ks) == len(random_rows),
            top_p=row_tensor([p.top_p for p in params], torch.float32) if uses_top_p else None,
            min_p=row_tensor([p.min_p for p in params], torch.float32) if uses_min_p else None,
            repetition_penalty=penalties.repetition if penalties else None,
            presence_penalty=penalties.presence if penalties else None,
            frequency_penalty=penalties.frequency if penalties else None,
            prompt_token_mask=penalties.prompt_token_mask if penalties else None,
            output_token_counts=penalties.output_token_counts if penalties else None,
            min_tokens_rows=min_tokens_rows,
            min_tokens_token_ids=min_tokens_token_ids,
            generators=[r.generator for r in requests],
            num_logprobs=num_logprobs,
            max_num_logprobs=max(requested) if requested else None,
        )


@dataclass
class _Penalties:
    repetition: torch.Tensor
    presence: torch.Tensor
    frequency: torch.Tensor
    prompt_token_mask: torch.Tensor | None
    output_token_counts: torch.Tensor


class _RequestTokenArrays:
    """Each request's prompt and output tokens as int64 arrays, kept across steps.

    Turning Python token lists into tensors costs 0.05 to 0.2 us per token,
    which for a batch of long prompts is tens of milliseconds every step. A prompt
    never changes and an output only grows, so each token is converted once in
    the life of its request. Entries go away with their requests (weak keys).
    """

    def __init__(self) -> None:
        self._prompts: weakref.WeakKeyDictionary[Request, np.ndarray] = weakref.WeakKeyDictionary()
        self._outputs: weakref.WeakKeyDictionary[Request, tuple[np.ndarray, int]] = (
            weakref.WeakKeyDictionary()
        )

    def prompt(self, request: Request) -> np.ndarray:
        """The distinct prompt tokens (repetition penalty only asks whether a token occurs)."""
        tokens = self._prompts.get(request)
        if tokens is None:
            tokens = np.unique(np.asarray(request.prompt_token_ids, dtype=np.int64))
            self._prompts[request] = tokens
        return tokens

    def output(self, request: Request) -> np.ndarray:
        """The output tokens, converting only those appended since the last call."""
        output = request.output_token_ids
        buffer, length = self._outputs.get(request, (np.empty(0, dtype=np.int64), 0))
        if len(output) < length:  # the output was replaced, not extended: start over
            length = 0
        if len(output) > buffer.shape[0]:
            grown = np.empty(max(2 * buffer.shape[0], len(output), 64), dtype=np.int64)
            grown[:length] = buffer[:length]
            buffer = grown
        buffer[length : len(output)] = output[length:]
        self._outputs[request] = (buffer, len(output))
        return buffer[: len(output)]


_TOKEN_ARRAYS = _RequestTokenArrays()


def _build_penalties(requests: list[Request], vocab_size: int, device: torch.device) -> _Penalties | None:
    """Penalty factors, prompt-token mask and output-token counts; None when no row uses a penalty."""
    params = [r.sampling_params for r in requests]
    if not any(p.uses_penalties for p in params):
        return None
    uses_repetition = [p.repetition_penalty != 1.0 for p in params]
    uses_additive = [p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in params]
    num_rows = len(requests)
    # Rows without penalties keep all-zero counts and an empty mask: their
    # neutral factors would make the result the same anyway.
    output_counts = torch.zeros((num_rows, vocab_size), dtype=torch.float32, device=device)
    rows, token_ids = _scatter_indices(
        [
            _TOKEN_ARRAYS.output(r) if rep or add else None
            for r, rep, add in zip(requests, uses_repetition, uses_additive)
        ],
        device,
    )
    output_counts.index_put_(
        (rows, token_ids), torch.ones_like(token_ids, dtype=torch.float32), accumulate=True
    )

    prompt_mask = None
    if any(uses_repetition):
        prompt_mask = torch.zeros((num_rows, vocab_size), dtype=torch.bool, device=device)
        rows, token_ids = _scatter_indices(
            [_TOKEN_ARRAYS.prompt(r) if rep else None for r, rep in zip(requests, uses_repetition)], device
        )
        prompt_mask[rows, token_ids] = True

    def row_tensor(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).to(device, non_blocking=True)

    return _Penalties(
        repetition=row_tensor([p.repetition_penalty for p in params]),
        presence=row_tensor([p.presence_penalty for p in params]),
        frequency=row_tensor([p.frequency_penalty for p in params]),
        prompt_token_mask=prompt_mask,
        output_token_counts=output_counts,
    )


def _scatter_indices(
    per_row: list[np.ndarray | None], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index, token id) pairs of ragged per-row token arrays (None = no tokens), as flat tensors."""
    arrays = [tokens if tokens is not None else _NO_TOKENS for tokens in per_row]
    lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    token_ids = np.concatenate(arrays) if arrays else _NO_TOKENS
    return torch.from_numpy(rows).to(device), torch.from_numpy(token_ids).to(device)


_NO_TOKENS = np.empty(0, dtype=np.int64)


def _build_min_tokens_ban(
    requests: list[Request], device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(row, token) pairs that must not be sampled because the row is still under min_tokens."""
    banned: list[list[int]] = []
    for request in requests:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            banned.append([])
            continue
        # Stopping early is what min_tokens forbids, so eos is banned even with
        # ignore_eos (where it would not stop anyway, banning it is harmless).
        tokens = list(params.stop_token_ids)
        if request.eos_token_id is not None:
            tokens.append(request.eos_token_id)
        banned.append(tokens)
    if not any(banned):
        return None, None
    return _scatter_indices([np.asarray(tokens, dtype=np.int64) for tokens in banned], device)
