"""The router's view of the workers: addresses, stubs, load and health.

A poller thread asks every worker for its load a few times a second. A worker
that fails ``MAX_FAILURES`` polls in a row leaves rotation until it answers
again; with discovery on, the worker list is refreshed from the kvstore's
registry (whose metadata may live in Redis).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from services.common.grpc_server import channel
from services.kvstore.errors import KvStoreError
from tandem._proto.tandem.v1 import common_pb2, worker_pb2_grpc

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
POLL_TIMEOUT_S = 1.0
MAX_FAILURES = 3


@dataclass(eq=False)
class WorkerHandle:
    worker_id: str
    address: str
    role: str  # "prefill", "decode" or "both"
    channel: grpc.Channel
    prefill: worker_pb2_grpc.PrefillWorkerStub | None
    decode: worker_pb2_grpc.DecodeWorkerStub | None
    load: common_pb2.WorkerLoad | None = None
    failures: int = 0
    # Requests the router sent here that have not finished (placement feedback
    # between two polls).
    in_flight: int = 0

    @property
    def healthy(self) -> bool:
        return self.load is not None and self.failures < MAX_FAILURES

    def mark_failed(self) -> None:
        """Take the worker out of rotation now (a call found it dead); a later poll brings it back."""
        if self.failures < MAX_FAILURES:
            logger.warning("worker %s at %s failed a call; out of rotation", self.worker_id, self.address)
        self.failures = MAX_FAILURES

    def poll(self) -> None:
        stub = self.prefill or self.decode
        assert stub is not None
        try:
            self.load = stub.GetLoad(common_pb2.LoadRequest(), timeout=POLL_TIMEOUT_S)
            self.failures = 0
        except grpc.RpcError:
            self.failures += 1
            if self.failures == MAX_FAILURES:
                logger.warning("worker %s at %s stopped answering; out of rotation", self.worker_id, self.address)


def make_handle(worker_id: str, address: str, role: str) -> WorkerHandle:
    chan = channel(address)
    serves_prefill = role in ("prefill", "both")
    serves_decode = role in ("decode", "both")
    return WorkerHandle(
        worker_id=worker_id,
        address=address,
        role=role,
        channel=chan,
        prefill=worker_pb2_grpc.PrefillWorkerStub(chan) if serves_prefill else None,
        decode=worker_pb2_grpc.DecodeWorkerStub(chan) if serves_decode else None,
    )


@dataclass
class WorkerPool:
    # Returns (worker_id, address, role) for every registered worker, or None
    # when discovery is off (static peers).
    discover: Callable[[], list[tuple[str, str, str]]] | None = None
    workers: dict[str, WorkerHandle] = field(default_factory=dict)
    # Called after every poll round (e.g. to publish the router's health).
    listeners: list[Callable[[], None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, worker_id: str, address: str, role: str) -> WorkerHandle:
        with self._lock:
            handle = self.workers.get(worker_id)
            if handle is None or handle.address != address:
                handle = make_handle(worker_id, address, role)
                self.workers[worker_id] = handle
            return handle

    def healthy(self, role: str) -> list[WorkerHandle]:
        with self._lock:
            handles = list(self.workers.values())
        return [h for h in handles if h.healthy and getattr(h, role) is not None]

    def healthy_loads(self) -> list[common_pb2.WorkerLoad]:
        """The last polled load of every healthy worker (each worker once, whatever its roles)."""
        with self._lock:
            handles = list(self.workers.values())
        return [h.load for h in handles if h.healthy and h.load is not None]

    def start(self) -> None:
        self.refresh()
        threading.Thread(target=self._run, name="router-worker-poll", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> None:
        if self.discover is not None:
            try:
                for worker_id, address, role in self.discover():
                    if role in ("prefill", "decode", "both"):
                        self.add(worker_id, address, role)
            except KvStoreError as exc:
                logger.warning("worker discovery failed: %s", exc)
        with self._lock:
            handles = list(self.workers.values())
        for handle in handles:
            handle.poll()
        for listener in self.listeners:
            listener()

    def wait_until_ready(self, timeout: float) -> bool:
        """Whether at least one decode-capable worker answered within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy("decode"):
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self.refresh()
