"""``POST /v1/completions``: text or token-id prompts, ``n`` choices each, streamed or not.

Choice ``i`` of prompt ``p`` has index ``p * n + i`` (OpenAI's order). With
``echo`` a choice's text starts with its prompt (the text as sent, or the
token ids decoded) and, with ``logprobs``, its logprobs start with the
prompt's, the first token having none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.gateway.context import GatewayContext, new_id, now_s
from services.gateway.generation import Generation
from services.gateway.logprobs import CompletionLogprobsBuilder
from services.gateway.protocol import CompletionRequest
from services.gateway.responses import CompletionChoice, CompletionChunk, CompletionResponse, Usage
from services.gateway.sampling import CompletionPrompt, completion_params, completion_prompts
from services.gateway.sse import sse_done, sse_error, sse_event
from tandem.client_types import GenerateDelta, TokenLogprob


@dataclass
class ChoiceState:
    prompt: CompletionPrompt
    logprobs: CompletionLogprobsBuilder | None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    echoed: bool = False
    finish_reason: str | None = None
    stop_reason: str | None = None


class CompletionRun:
    """Turns one request's deltas into OpenAI choices, whole or as chunks."""

    def __init__(self, ctx: GatewayContext, body: CompletionRequest, model: str) -> None:
        self.ctx = ctx
        self.body = body
        self.model = model
        self.id = new_id("cmpl")
        self.created = now_s()
        self.prompts = completion_prompts(body)
        self.params = completion_params(body)
        self.generation = Generation(ctx.client, self.id, self.prompts, self.params)
        self.choices: dict[int, ChoiceState] = {}

    def _choice(self, prompt_index: int, sample_index: int) -> tuple[int, ChoiceState]:
        index = prompt_index * self.body.n + sample_index
        if index not in self.choices:
            k = self.body.logprobs
            builder = CompletionLogprobsBuilder(self.ctx.token_texts, k) if k is not None else None
            self.choices[index] = ChoiceState(self.prompts[prompt_index], builder)
        return index, self.choices[index]

    def _echo(self, prompt_index: int, state: ChoiceState, delta: GenerateDelta) -> CompletionChoice:
        """The prompt part of a choice: its text, and its tokens' logprobs when asked for."""
        state.echoed = True
        prompt = state.prompt
        prompt_ids = self.generation.prompt_info[prompt_index].token_ids
        text = prompt if isinstance(prompt, str) else self.ctx.tokenizer.decode(prompt_ids)
        logprobs = None
        if state.logprobs is not None:
            entries: list[TokenLogprob | None] = [None, *delta.prompt_logprobs]
            entries += [None] * (len(prompt_ids) - len(entries))
            logprobs = state.logprobs.build(prompt_ids, entries)
        return CompletionChoice(index=0, text=text, logprobs=logprobs)

    def apply(self, prompt_index: int, delta: GenerateDelta) -> CompletionChoice:
        """Record a delta; returns the choice's new part (with the echo in front on its first delta)."""
        index, state = self._choice(prompt_index, delta.index)
        echo = self._echo(prompt_index, state, delta) if self.body.echo and not state.echoed else None
        state.text += delta.text
        state.token_ids.extend(delta.token_ids)
        logprobs = None
        if state.logprobs is not None:
            logprobs = state.logprobs.build(delta.token_ids, list(delta.logprobs))
            if echo is not None and echo.logprobs is not None:
                for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    getattr(echo.logprobs, name).extend(getattr(logprobs, name))
                logprobs = echo.logprobs
        if delta.finish_reason is not None:
            state.finish_reason = delta.finish_reason
            state.stop_reason = delta.stop_reason
        text = (echo.text if echo else "") + delta.text
        return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=delta.finish_reason,
                                stop_reason=delta.stop_reason)

    def usage(self) -> Usage:
        prompt = sum(info.num_tokens for info in self.generation.prompt_info)
        completion = sum(len(s.token_ids) for s in self.choices.values())
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def collect(self) -> CompletionResponse:
        parts: dict[int, list[CompletionChoice]] = {}
        async for prompt_index, delta in self.generation.events():
            part = self.apply(prompt_index, delta)
            parts.setdefault(part.index, []).append(part)
        choices = [_merge(index, parts[index], self.choices[index]) for index in sorted(parts)]
        return CompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices,
                                  usage=self.usage())

    async def stream(self) -> AsyncIterator[str]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        try:
            async for prompt_index, delta in self.generation.events():
                chunk = CompletionChunk(id=self.id, created=self.created, model=self.model,
                                        choices=[self.apply(prompt_index, delta)])
                yield sse_event(chunk)
            if include_usage:
                yield sse_event(CompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                                usage=self.usage()))
        except Exception as exc:  # noqa: BLE001 -- after the 200 went out, an error can only travel in the stream
            yield sse_error(exc)
        yield sse_done()


def _merge(index: int, parts: list[CompletionChoice], state: ChoiceState) -> CompletionChoice:
    logprobs = None
    if state.logprobs is not None:
        logprobs = parts[0].logprobs
        for part in parts[1:]:
            for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(logprobs, name).extend(getattr(part.logprobs, name))
    return CompletionChoice(index=index, text="".join(p.text for p in parts), logprobs=logprobs,
                            finish_reason=state.finish_reason, stop_reason=state.stop_reason)
