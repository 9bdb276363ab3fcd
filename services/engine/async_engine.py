"""Runs an engine on its own thread so servers can feed it from many threads.

Lifecycle:
  1. A server thread calls ``generate`` (or ``submit`` a prepared request).
     Tokenizing and validating happen on the caller's thread, so bad input
     raises there at once; the request then goes onto the command queue and
     the caller gets a :class:`RequestStream`.
  2. The engine thread drains commands (add, abort, callables) between steps,
     runs ``engine.step()`` while anything is unfinished, and pushes each
     request's snapshots into its stream.
  3. The stream ends with a finished snapshot (stop, length or abort). An
     engine failure ends every open stream with the exception instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from services.engine.engine import LLMEngine
from services.engine.frozen_heap import frozen_heap
from services.engine.outputs import RequestOutput
from services.engine.request_intake import PreparedRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")


class EngineDeadError(RuntimeError):
    """The engine thread stopped; no more requests can be served by it."""


class RequestStream:
    """The snapshots of one request, in order; iteration ends after the finished one."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: queue.SimpleQueue[RequestOutput | BaseException] = queue.SimpleQueue()

    def put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put(item)

    def get(self, timeout: float | None = None) -> RequestOutput:
        item = self._queue.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[RequestOutput]:
        while True:
            output = self.get()
            yield output
            if output.finished:
                return


class AsyncEngine:
    def __init__(self, engine: LLMEngine, name: str = "tandem-engine") -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._error: BaseException | None = None

    def start(self) -> AsyncEngine:
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._commands.put(lambda: None)  # wake the loop
        self._thread.join(timeout)

    # -- API for server threads ----------------------------------------------------

    def generate(self, request_id: str, prompt: str | list[int], params: Any = None, **presampled: Any) -> RequestStream:
        """Validate on this thread (raising for bad input), then queue the request."""
        return self.submit(self.engine.prepare_request(request_id, prompt, params, **presampled))

    def submit(self, prepared: PreparedRequest) -> RequestStream:
        self._check_alive()
        stream = RequestStream(prepared.request_id)

        def add() -> None:
            try:
                self.engine.add_prepared(prepared)
            except Exception as exc:  # duplicate id and the like: report to the caller only
                stream.put(exc)
                return
            self._streams[prepared.request_id] = stream

        self._commands.put(add)
        return stream

    def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason "abort" and its blocks are freed."""
        self._commands.put(lambda: self.engine.abort_request(request_id))

    def call(self, fn: Callable[[LLMEngine], T], timeout: float | None = 60.0) -> T:
        """Run ``fn(engine)`` on the engine thread between steps and return its result."""
        self._check_alive()
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn(self.engine))
            except BaseException as exc:
                future.set_exception(exc)

        self._commands.put(run)
        return future.result(timeout)

    # -- the engine thread -----------------------------------------------------------

    def _check_alive(self) -> None:
        if self._error is not None or self._stopping.is_set():
            raise EngineDeadError(f"the engine has stopped: {self._error!r}")

    def _loop(self) -> None:
        try:
            with frozen_heap():
                while not self._stopping.is_set():
                    worked = self._drain_commands(block=not self.engine.has_unfinished_requests())
                    if worked or self.engine.has_unfinished_requests():
                        self._dispatch(self.engine.step())
        except BaseException as exc:
            logger.exception("engine thread failed")
            self._error = exc
        finally:
            failure = self._error or EngineDeadError("the engine was shut down")
            for stream in self._streams.values():
                stream.put(failure)
            self._streams.clear()

    def _drain_commands(self, block: bool) -> bool:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return False
        command()
        while True:
            try:
                self._commands.get_nowait()()
            except queue.Empty:
                return True

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]
