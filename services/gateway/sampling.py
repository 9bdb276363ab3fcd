"""OpenAI request bodies -> the engine's ``SamplingParams`` and the router's prompts.

The checks that pydantic's field bounds cannot express (one parameter against
another, unsupported features) raise 400s naming the parameter here, before
anything reaches the router.
"""

from __future__ import annotations

from services.engine.errors import InvalidSamplingParamsError
from services.engine.sampling_params import SamplingParams
from services.gateway.errors import bad_request
from services.gateway.protocol import MAX_CHOICES, ChatCompletionRequest, CompletionRequest, SamplingFields

# OpenAI's defaults where the engine's differ.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0

CompletionPrompt = str | list[int]


def _params(body: SamplingFields, max_tokens: int | None, logprobs: int | None,
            prompt_logprobs: int | None) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    fields = {
        "n": body.n,
        "temperature": DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        "top_p": DEFAULT_TOP_P if body.top_p is None else body.top_p,
        "top_k": max(0, body.top_k or 0),
        "min_p": body.min_p or 0.0,
        "repetition_penalty": 1.0 if body.repetition_penalty is None else body.repetition_penalty,
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "seed": body.seed,
        "stop": stop,
        "stop_token_ids": list(body.stop_token_ids or []),
        "ignore_eos": body.ignore_eos,
        "max_tokens": max_tokens,
        "min_tokens": body.min_tokens,
        "logprobs": logprobs,
        "prompt_logprobs": prompt_logprobs,
        "skip_special_tokens": body.skip_special_tokens,
    }
    try:
        return SamplingParams(**fields)
    except InvalidSamplingParamsError as exc:
        # The engine's messages start with the parameter's name.
        name = str(exc).split(" ", 1)[0]
        raise bad_request(str(exc), name if name in fields else None) from None


def completion_prompts(body: CompletionRequest) -> list[CompletionPrompt]:
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts: list[CompletionPrompt] = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [list(prompt)]  # type: ignore[arg-type]
    else:
        prompts = list(prompt)  # type: ignore[arg-type]
    if len(prompts) * body.n > MAX_CHOICES:
        raise bad_request(f"a request may ask for at most {MAX_CHOICES} choices (prompts x n), "
                          f"this one asks for {len(prompts) * body.n}", "n")
    return prompts


def completion_params(body: CompletionRequest) -> SamplingParams:
    if body.suffix:
        raise bad_request("suffix is not supported", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request("best_of must equal n (choosing the best of several samples is not supported)",
                          "best_of")
    prompt_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
    return _params(body, body.max_tokens, body.logprobs, prompt_logprobs)


def chat_params(body: ChatCompletionRequest) -> SamplingParams:
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true", "top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return _params(body, max_tokens, logprobs, None)


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    """Messages for the chat template; OpenAI's "developer" role is the templates' "system"."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
