"""The downstream calls of one sample, and the signal that cancels them when the client leaves."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from services.router.worker_pool import WorkerHandle


class CancelSignal:
    """Set once, when the client cancels; runs the callbacks added before (and any added after, at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        return self._set

    def add_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._set:
                self._callbacks.append(callback)
                return
        callback()


@dataclass
class SampleCall:
    """The downstream calls of one sample, so a cancel can reach them."""

    request_id: str
    workers: list[WorkerHandle] = dataclasses.field(default_factory=list)
    decode_call: grpc.Future | None = None
    prefill_call: grpc.Future | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        """Cancel the calls in flight, and (see ``started``) any started after this."""
        self.cancelled = True
        for future in (self.decode_call, self.prefill_call):
            if future is not None:
                future.cancel()

    def started(self, future: grpc.Future) -> None:
        """Called after a downstream call is stored: one that raced a cancel is cancelled too."""
        if self.cancelled:
            future.cancel()
