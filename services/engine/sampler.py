"""Turns one step's logits into sampled token ids (and logprobs where asked).

Order of work: logprobs come from the raw model logits (what the model
believes, before any user-chosen shaping); then min_tokens bans, penalties,
greedy argmax; then temperature, top-k, top-p, min-p and a random draw for
the other rows.

The draw is an exponential race: ``argmax(p / q)`` with ``q ~ Exp(1)`` picks
token ``i`` with probability ``p_i``. Each row's ``q`` is one vector of
vocab-size draws from that row's own generator when it has one, so a seeded
request consumes its random stream the same way and gets the same tokens
whatever else shares the batch.
"""

from __future__ import annotations

import torch

from services.engine.sampled_output import (
    LogprobTensors,
    SampledBatch,
    SampleLogprobs,
    SamplerOutput,
    gather_logprobs,
)
from services.engine.sampling_batch import SamplingBatch

__all__ = ["SampleLogprobs", "Sampler", "SamplerOutput", "advance_generator", "compute_prompt_logprobs"]

# Keeps an exponential draw of exactly 0 from turning p / q into inf or nan.
_MIN_EXPONENTIAL = 1e-20
# Prompt logprobs are computed this many logit elements at a time, so a long
# prompt never needs a full [P, V] float32 copy.
_PROMPT_LOGPROBS_CHUNK_ELEMENTS = 32 * 1024 * 1024


class Sampler:
    """Samples one token per row; stateless apart from the generator unseeded rows share."""

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._shared_generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """Sample and read the result back (syncs with the device)."""
        return self.sample(logits, batch).to_output()

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> SampledBatch:
        """Sample one token per row; the result stays on the device (no host sync)."""
        if batch.is_plain_greedy:
            # argmax on the model's dtype equals argmax in float32 (the cast is monotonic).
            return SampledBatch(logits.argmax(dim=-1))

        raw_logprobs = None
        logprob_rows = [i for i, n in enumerate(batch.num_logprobs) if n is not None]
        if logprob_rows:
            raw_logprobs = torch.log_softmax(logits[logprob_rows].to(torch.float32), dim=-1)

        # Work on a float32 copy: the caller's logits stay untouched.
        logits = logits.to(torch.float32, copy=True)
        if batch.min_tokens_rows is not None:
            logits[batch.min_tokens_rows, batch.min_tokens_token_ids] = float("-inf")
        if batch.needs_penalties:
            apply_penalties(logits, batch)

        if batch.all_greedy:
            sampled = logits.argmax(dim=-1)
        elif len(batch.random_rows) == batch.num_rows:
            sampled = self._sample_random(logits, batch, slice(None), batch.random_rows)
        else:
            sampled = logits.argmax(dim=-1)
            index = batch.random_row_index
            assert index is not None
            sampled[index] = self._sample_random(logits[index], batch, index, batch.random_rows)

        if raw_logprobs is None:
            return SampledBatch(sampled)
        ks = [batch.num_logprobs[i] or 0 for i in logprob_rows]
        logprobs = LogprobTensors.gather(raw_logprobs, sampled[logprob_rows], max(ks))
        return SampledBatch(sampled, logprob_rows, ks, logprobs)

    def _sample_random(
        self,
        logits: torch.Tensor,
        batch: SamplingBatch,
        index: torch.Tensor | slice,
        rows: list[int],
    ) -> torch.Tensor:
        """Sample the rows ``rows`` of the batch, whose logits (already penalized) are given."""
        logits.div_(batch.temperature[index].unsqueeze(1))
        if batch.top_k is not None or batch.top_p is not None:
            top_k = batch.top_k[index] if batch.top_k is not None else None
            top_p = batch.top_p[index] if batch.top_p is not None else None
            logits = _apply_top_k_top_p(
                logits, top_k, batch.max_top_k, batch.top_k_on_every_random_row, top_p
            )
        probs = torch.softmax(logits, dim=-1)
        if batch.min_p is not None:
            # p < min_p * p_max  <=>  the token is too unlikely relative to the best.
            threshold = batch.min_p[index].unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
            probs.masked_fill_(probs < threshold, 0.0)
        race = self._exponential_draws(probs, [batch.generators[r] for r in rows])
        return probs.div_(race.clamp_min_(_MIN_EXPONENTIAL)).argmax(dim=-1)

    def _exponential_draws(
        self, probs: torch.Tensor, generators: list[torch.Generator | None]
    ) -> torch.Tensor:
        draws = torch.empty_like(probs)
        shared_rows = [j for j, g in enumerate(generators) if g is None]
        if shared_rows:
            shared = self._shared_generator(probs.device)
            if len(shared_rows) == len(generators):
                draws.exponential_(generator=shared)
            else:
                block = torch.empty(
                    (len(shared_rows), probs.shape[1]), dtype=probs.dtype, device=probs.device
                )
                draws[shared_rows] = block.exponential_(generator=shared)
        for j, generator in enumerate(generators):
            if generator is None:
                continue
            if generator.device == probs.device:
                draws[j].exponential_(generator=generator)
            else:
                # Drawn where the generator lives: a CPU generator with CUDA
                # logits still reproduces, at the price of a copy.
                row = torch.empty(probs.shape[1], dtype=probs.dtype, device=generator.device)
                draws[j].copy_(row.exponential_(generator=generator))
        return draws

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._shared_generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            if self._seed is None:
                generator.seed()
            else:
                generator.manual_seed(self._seed)
            self._shared_generators[device] = generator
        return generator


def advance_generator(generator: torch.Generator, vocab_size: int, num_tokens: int) -> None:
    """Consume the draws ``num_tokens`` sampled tokens would have taken from ``generator``.

    Each random token takes exactly one float32 vector of ``vocab_size``
    exponential draws; a worker continuing a sample another process started
    skips those to stay on the same random stream.
    """
    for _ in range(num_tokens):
        torch.empty(vocab_size, dtype=torch.float32, device=generator.device).exponential_(generator=generator)


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> None:
    """Apply the batch's repetition, frequency and presence penalties to float32 ``logits`` in place."""
    counts = batch.output_token_counts
    assert counts is not None and batch.repetition_penalty is not None
    if batch.prompt_token_mask is not None:
        # HF semantics: shrink the logit of every token seen in prompt or output
        # towards "less likely" (divide positives, multiply negatives).
        seen = batch.prompt_token_mask | (counts > 0)
        penalty = batch.repetition_penalty.unsqueeze(1).expand_as(logits)
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits.copy_(torch.where(seen, penalized, logits))
    # OpenAI semantics, over output tokens only.
    logits.sub_(batch.frequency_penalty.unsqueeze(1) * counts)
    logits.sub_(batch.presence_penalty.unsqueeze(1) * (counts > 0).to(logits.dtype))


def _apply_top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    max_top_k: int,
    top_k_on_every_row: bool,
    top_p: torch.Tensor | None,
) -> torch.Tensor:
    """Set to -inf every logit outside the row's top-k and top-p sets (0 / 1.0 disable them)."""
    neg_inf = float("-inf")
    if top_p is None:
        assert top_k is not None
        # No sort needed: the k-th largest value is the row's threshold.
        kth_values = logits.topk(max_top_k, dim=-1).values
        threshold = kth_values.gather(1, (top_k.clamp(min=1) - 1).unsqueeze(1))
        threshold.masked_fill_((top_k == 0).unsqueeze(1), neg_inf)
        return logits.masked_fill_(logits < threshold, neg_inf)

    # Candidates best first. When every row has a top-k, nothing outside the
    # max_top_k best can survive, so a partial top-k replaces the full sort
    # (the common "top_k=50, top_p=0.95" costs a small fraction of it).
    if top_k_on_every_row:
        candidates, candidate_ids = logits.topk(max_top_k, dim=-1)
    else:
        candidates, candidate_ids = logits.sort(dim=-1, descending=True)
    if top_k is not None:
        positions = torch.arange(candidates.shape[1], device=logits.device)
        outside_k = (positions.unsqueeze(0) >= top_k.unsqueeze(1)) & (top_k > 0).unsqueeze(1)
        candidates.masked_fill_(outside_k, neg_inf)
    candidate_probs = torch.softmax(candidates, dim=-1)
    # Keep a token while the mass strictly before it is below top_p: the
    # smallest set reaching top_p, and always the top token (mass before it 0).
    mass_before = candidate_probs.cumsum(dim=-1) - candidate_probs
    candidates.masked_fill_(mass_before >= top_p.unsqueeze(1), neg_inf)
    return torch.full_like(logits, neg_inf).scatter_(1, candidate_ids, candidates)


def compute_prompt_logprobs(
    logits: torch.Tensor, target_token_ids: torch.Tensor, k: int
) -> list[SampleLogprobs]:
    """Logprobs of a prompt's tokens: row ``i`` of ``logits`` predicts ``target_token_ids[i]``.

    The caller passes logits of positions ``0..P-1`` and the prompt tokens
    ``1..P`` as targets; ``k`` top candidates are returned per position.
    """
    num_positions, vocab_size = logits.shape
    target_token_ids = target_token_ids.to(logits.device, dtype=torch.int64)
    chunk_rows = max(1, _PROMPT_LOGPROBS_CHUNK_ELEMENTS // vocab_size)
    results: list[SampleLogprobs] = []
    for start in range(0, num_positions, chunk_rows):
        end = min(start + chunk_rows, num_positions)
        chunk = torch.log_softmax(logits[start:end].to(torch.float32), dim=-1)
        results.extend(gather_logprobs(chunk, target_token_ids[start:end], [k] * (end - start)))
    return results
