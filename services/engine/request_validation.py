"""Checks a prompt against the model before it reaches the scheduler."""

from __future__ import annotations

from services.engine.errors import EmptyPromptError, InvalidRequestError, PromptTooLongError
from services.engine.sampling_params import SamplingParams


def validate_prompt(
    token_ids: list[int],
    params: SamplingParams,
    max_model_len: int,
    tokenizer_size: int,
    vocab_size: int,
) -> None:
    """Raise a precise :class:`InvalidRequestError` subclass if the prompt cannot be served."""
    if not token_ids:
        raise EmptyPromptError("the prompt is empty: it must contain at least one token")
    if len(token_ids) >= max_model_len:
        raise PromptTooLongError(
            f"the prompt has {len(token_ids)} tokens, but max_model_len is {max_model_len} "
            "(at least one token must be left to generate)"
        )
    limit = max(tokenizer_size, vocab_size)
    bad = next((t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(f"prompt token id {bad!r} is outside the vocabulary [0, {vocab_size})")
    bad_stop = next((t for t in params.stop_token_ids if t >= limit), None)
    if bad_stop is not None:
        raise InvalidRequestError(f"stop token id {bad_stop} is outside the vocabulary [0, {limit})")
