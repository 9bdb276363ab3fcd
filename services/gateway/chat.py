"""``POST /v1/chat/completions``: the messages go to the router as ``ChatMessages`` (the model's chat template).

Streaming follows OpenAI: a choice's first chunk carries ``role``, then
content chunks, then a chunk with an empty delta and the finish reason; with
``stream_options.include_usage`` a last chunk has no choices and the usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.gateway.context import GatewayContext, new_id, now_s
from services.gateway.generation import Generation
from services.gateway.logprobs import chat_logprobs
from services.gateway.protocol import ChatCompletionRequest
from services.gateway.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    Usage,
)
from services.gateway.sampling import chat_messages, chat_params
from services.gateway.sse import sse_done, sse_error, sse_event
from tandem.client_types import GenerateDelta


@dataclass
class ChatChoiceState:
    text: str = ""
    num_tokens: int = 0
    logprobs: list[ChatTokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | None = None


class ChatRun:
    def __init__(self, ctx: GatewayContext, body: ChatCompletionRequest, model: str) -> None:
        self.ctx = ctx
        self.body = body
        self.model = model
        self.id = new_id("chatcmpl")
        self.created = now_s()
        self.params = chat_params(body)
        self.generation = Generation(ctx.client, self.id, [chat_messages(body)], self.params,
                                     add_generation_prompt=body.add_generation_prompt)
        self.choices: dict[int, ChatChoiceState] = {}

    def apply(self, delta: GenerateDelta) -> tuple[bool, list[ChatTokenLogprob] | None]:
        """Record a delta; returns whether it is the choice's first, and its logprob entries."""
        first = delta.index not in self.choices
        state = self.choices.setdefault(delta.index, ChatChoiceState())
        state.text += delta.text
        state.num_tokens += len(delta.token_ids)
        entries = None
        if self.params.logprobs is not None:
            entries = chat_logprobs(self.ctx.token_texts, delta.logprobs, self.params.logprobs)
            state.logprobs.extend(entries)
        if delta.finish_reason is not None:
            state.finish_reason = delta.finish_reason
            state.stop_reason = delta.stop_reason
        return first, entries

    def usage(self) -> Usage:
        prompt = self.generation.prompt_info[0].num_tokens
        completion = sum(s.num_tokens for s in self.choices.values())
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def collect(self) -> ChatCompletionResponse:
        async for _, delta in self.generation.events():
            self.apply(delta)
        choices = [
            ChatChoice(
                index=index,
                message=ChatMessageOut(content=state.text),
                logprobs=ChatLogprobs(content=state.logprobs) if self.params.logprobs is not None else None,
                finish_reason=state.finish_reason,
                stop_reason=state.stop_reason,
            )
            for index, state in sorted(self.choices.items())
        ]
        return ChatCompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices,
                                      usage=self.usage())

    def _chunk(self, choice: ChatChunkChoice | None, usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    choices=[choice] if choice else [], usage=usage)
        return sse_event(chunk)

    async def stream(self) -> AsyncIterator[str]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        try:
            async for _, delta in self.generation.events():
                first, entries = self.apply(delta)
                index = delta.index
                if first:
                    yield self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content="")))
                if delta.text or delta.token_ids:
                    logprobs = ChatLogprobs(content=entries) if entries is not None else None
                    yield self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text),
                                                      logprobs=logprobs))
                if delta.finish_reason is not None:
                    yield self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(),
                                                      finish_reason=delta.finish_reason,
                                                      stop_reason=delta.stop_reason))
            if include_usage:
                yield self._chunk(None, self.usage())
        except Exception as exc:  # noqa: BLE001 -- after the 200 went out, an error can only travel in the stream
            yield sse_error(exc)
        yield sse_done()
