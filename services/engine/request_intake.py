"""Turning user input into validated requests, off the engine thread.

``prepare_request`` tokenizes and validates; it touches no engine state, so a
server thread can run it and report bad input at once while the engine thread
keeps stepping. ``build_children`` makes the ``n`` scheduler requests of a
prepared one (on the engine thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from services.engine.errors import InvalidRequestError
from services.engine.model_loading import LoadedModel
from services.engine.request import Request
from services.engine.request_validation import validate_prompt
from services.engine.sampler import SampleLogprobs, advance_generator
from services.engine.sampling_params import SamplingParams


@dataclass
class PreparedRequest:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    # Output tokens sampled elsewhere already (a prefill worker's first token),
    # with their logprobs when the request asked for them.
    presampled_token_ids: list[int] = field(default_factory=list)
    presampled_logprobs: list[SampleLogprobs | None] = field(default_factory=list)


def prepare_request(
    model: LoadedModel,
    max_model_len: int,
    request_id: str,
    prompt: str | list[int],
    params: SamplingParams | None = None,
    presampled_token_ids: list[int] | None = None,
    presampled_logprobs: list[SampleLogprobs | None] | None = None,
) -> PreparedRequest:
    """Tokenize and validate; raises an :class:`InvalidRequestError` subclass for bad input."""
    params = params or SamplingParams()
    tokenizer = model.tokenizer
    if isinstance(prompt, str):
        token_ids = tokenizer.encode(prompt, add_special_tokens=True)
    else:
        token_ids = list(prompt)
    validate_prompt(token_ids, params, max_model_len, len(tokenizer), model.vocab_size)
    presampled = list(presampled_token_ids or [])
    if presampled and params.n != 1:
        raise InvalidRequestError("presampled tokens are only supported for n == 1")
    if any(not 0 <= t < model.vocab_size for t in presampled):
        raise InvalidRequestError("presampled token id outside the vocabulary")
    logprobs = list(presampled_logprobs or [None] * len(presampled))
    return PreparedRequest(
        request_id=request_id,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_token_ids=token_ids,
        params=model.with_extra_stop_tokens(params),
        presampled_token_ids=presampled,
        presampled_logprobs=logprobs,
    )


def build_children(prepared: PreparedRequest, model: LoadedModel, device: torch.device) -> list[Request]:
    """The ``n`` sample requests of one prepared request, sharing its prompt."""
    params = prepared.params
    children = []
    for index in range(params.n):
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed + index)
            if not params.greedy:
                # Tokens sampled elsewhere used this stream already: skip their draws
                # so the rest of the sample is what one engine alone would produce.
                advance_generator(generator, model.vocab_size, len(prepared.presampled_token_ids))
        children.append(
            Request(
                request_id=f"{prepared.request_id}#{index}",
                prompt_token_ids=prepared.prompt_token_ids,
                sampling_params=params,
                eos_token_id=model.eos_token_id,
                arrival_time=prepared.arrival_time,
                generator=generator,
            )
        )
    return children
