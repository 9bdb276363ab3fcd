"""The router calls behind one HTTP request: one Generate stream per prompt, merged into one.

``start`` waits until every prompt has its first delta (or one failed), so an
error the router reports before any output (bad parameter, unknown model,
admission refusal) still becomes a proper HTTP status rather than a broken
200 stream. ``cancel`` (on client disconnect, on error, or when the response
is done) cancels every call, and the router aborts the request downstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from starlette.requests import Request

from services.engine.sampling_params import SamplingParams
from services.gateway.errors import ApiError, from_rpc
from tandem.client import AsyncTandemClient
from tandem.client_types import GenerateDelta, Prompt, TandemRpcError


@dataclass
class PromptInfo:
    """How the router tokenized one prompt (from its first response)."""

    token_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0


class ClientGone(Exception):
    """The calls were cancelled, e.g. because the HTTP client disconnected."""


# An item on the merged queue: a delta, an error, or None when a prompt's stream ended.
_Item = tuple[int, GenerateDelta | BaseException | None]


class Generation:
    def __init__(self, client: AsyncTandemClient, request_id: str, prompts: Sequence[Prompt],
                 params: SamplingParams, add_generation_prompt: bool = True) -> None:
        self.client = client
        self.request_id = request_id
        self.prompts = list(prompts)
        self.params = params
        self.add_generation_prompt = add_generation_prompt
        self.prompt_info = [PromptInfo() for _ in self.prompts]
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._buffer: list[_Item] = []
        self._tasks: list[asyncio.Task] = []
        self._open = len(self.prompts)
        self._cancelled = False

    async def _pump(self, index: int, prompt: Prompt) -> None:
        try:
            async for delta in self.client.generate(
                prompt, self.params, request_id=f"{self.request_id}-{index}",
                add_generation_prompt=self.add_generation_prompt,
            ):
                self._queue.put_nowait((index, delta))
            self._queue.put_nowait((index, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- handed to the consumer, which turns it into an HTTP error
            self._queue.put_nowait((index, exc))

    def _record(self, index: int, delta: GenerateDelta) -> None:
        if delta.prompt_token_ids:
            self.prompt_info[index] = PromptInfo(delta.prompt_token_ids, delta.num_prompt_tokens)

    async def start(self) -> None:
        """Start every call and wait for each prompt's first delta; raises :class:`ApiError`."""
        self._tasks = [asyncio.create_task(self._pump(i, p)) for i, p in enumerate(self.prompts)]
        waiting = set(range(len(self.prompts)))
        try:
            while waiting:
                index, item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise _api_error(item)
                if isinstance(item, GenerateDelta):
                    self._record(index, item)
                self._buffer.append((index, item))
                waiting.discard(index)
        except BaseException:
            self.cancel()
            raise

    def _waiting(self, items: list[_Item]) -> list[_Item]:
        while True:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return items

    async def events(self) -> AsyncIterator[tuple[int, GenerateDelta]]:
        """(prompt index, delta) until every prompt's stream ended; raises :class:`ApiError`.

        Deltas of one sample that are already waiting come out as one (each
        event costs a chunk's serialization and an HTTP write, whatever it holds).
        """
        try:
            while self._open:
                items, self._buffer = self._buffer or [await self._queue.get()], []
                merged: dict[tuple[int, int], GenerateDelta] = {}
                failure: BaseException | None = None
                for index, item in self._waiting(items):
                    if item is None:
                        self._open -= 1
                    elif isinstance(item, BaseException):
                        failure = item
                        break
                    else:
                        self._record(index, item)
                        earlier = merged.get((index, item.index))
                        if earlier is None:
                            merged[(index, item.index)] = item
                        else:
                            _append(earlier, item)
                for (index, _), delta in merged.items():
                    yield index, delta
                if failure is not None:
                    raise _api_error(failure)
        finally:
            self.cancel()

    def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        for task in self._tasks:
            task.cancel()
        # Wake a consumer waiting for the next delta: no more will come.
        self._queue.put_nowait((-1, ClientGone()))

    async def cancel_on_disconnect(self, request: Request) -> None:
        """Run alongside the response: a client that goes away cancels the router calls."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.cancel()
                return


def _append(into: GenerateDelta, later: GenerateDelta) -> None:
    """Fold ``later``, the next delta of the same sample, into ``into``."""
    into.token_ids.extend(later.token_ids)
    into.text += later.text
    into.logprobs.extend(later.logprobs)
    into.prompt_logprobs.extend(later.prompt_logprobs)
    if later.finish_reason is not None:
        into.finish_reason = later.finish_reason
        into.stop_reason = later.stop_reason
    if later.prompt_token_ids and not into.prompt_token_ids:
        into.prompt_token_ids = later.prompt_token_ids
        into.num_prompt_tokens = later.num_prompt_tokens


def _api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, TandemRpcError):
        return from_rpc(exc)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ClientGone):
        # nginx's "client closed request": nobody reads it, but the metrics do.
        return ApiError(499, "the request was cancelled", "invalid_request_error", code="cancelled")
    return ApiError(502, f"the router call failed: {type(exc).__name__}", "server_error", code="bad_gateway")
