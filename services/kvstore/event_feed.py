"""The event feed behind WatchEvents: replay from the backend's log, then wait for more.

Events are appended by the metadata backend (so replicas sharing Redis share
one sequence); this process is woken at once for its own events and polls
the backend every ``poll_interval_s`` for other replicas' ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from services.kvstore.metadata import MetadataBackend
from tandem._proto.tandem.v1 import kvstore_pb2

REPLAY_BATCH = 512


class EventFeed:
    def __init__(self, metadata: MetadataBackend, poll_interval_s: float = 0.25) -> None:
        self._metadata = metadata
        self._poll_interval_s = poll_interval_s
        self._changed = threading.Condition()
        self._generation = 0
        self._closed = False

    def published(self, events: Iterable[kvstore_pb2.KvEvent | None]) -> None:
        """Wake watchers after this process appended events (``None`` entries are ignored)."""
        if any(event is not None for event in events):
            with self._changed:
                self._generation += 1
                self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def events_after(self, sequence: int, limit: int = REPLAY_BATCH) -> list[kvstore_pb2.KvEvent]:
        return self._metadata.events_after(sequence, limit)

    def watch(self, after_sequence: int, is_active: Callable[[], bool] = lambda: True) -> Iterator[kvstore_pb2.KvEvent]:
        """Every event after ``after_sequence``, then live ones, until closed or ``is_active()`` is false."""
        cursor = after_sequence
        while is_active():
            with self._changed:
                if self._closed:
                    return
                generation = self._generation
            batch = self.events_after(cursor)
            for event in batch:
                cursor = event.sequence
                yield event
            if batch:
                continue
            with self._changed:
                if self._generation == generation and not self._closed:
                    self._changed.wait(self._poll_interval_s)

    def wake(self) -> None:
        """Make waiting watchers re-check ``is_active`` (e.g. after a client cancelled)."""
        with self._changed:
            self._changed.notify_all()
