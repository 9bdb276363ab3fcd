"""The embedded metadata backend: plain dicts in the store's own memory.

Everything is lost with the process, which is right for a single store: its
payloads are lost with it too. Liveness is trivially "this process", so
there are no dead replicas to sweep.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from services.kvstore.metadata.base import (
    EVENT_LOG_LIMIT,
    BlockMeta,
    LeaseRecord,
    MetadataBackend,
    removed_event,
    stored_event,
)
from tandem._proto.tandem.v1 import common_pb2, kvstore_pb2


class MemoryMetadata(MetadataBackend):
    def __init__(self, event_log_limit: int = EVENT_LOG_LIMIT) -> None:
        self._lock = threading.Lock()
        self._identity: common_pb2.ModelIdentity | None = None
        self._workers: dict[str, kvstore_pb2.WorkerInfo] = {}
        self._blocks: dict[bytes, BlockMeta] = {}
        self._locations: dict[bytes, set[str]] = {}
        self._leases: dict[str, LeaseRecord] = {}
        self._events: deque[kvstore_pb2.KvEvent] = deque(maxlen=event_log_limit)
        self._sequence = 0

    def claim_identity(self, identity: common_pb2.ModelIdentity) -> common_pb2.ModelIdentity:
        with self._lock:
            if self._identity is None:
                self._identity = common_pb2.ModelIdentity()
                self._identity.CopyFrom(identity)
            return self._identity

    def identity(self) -> common_pb2.ModelIdentity | None:
        with self._lock:
            return self._identity

    def put_worker(self, worker: kvstore_pb2.WorkerInfo) -> None:
        with self._lock:
            self._workers[worker.worker_id] = worker

    def workers(self) -> list[kvstore_pb2.WorkerInfo]:
        with self._lock:
            return [self._workers[worker_id] for worker_id in sorted(self._workers)]

    def _append(self, event: kvstore_pb2.KvEvent) -> kvstore_pb2.KvEvent:
        self._sequence += 1
        event.sequence = self._sequence
        self._events.append(event)
        return event

    def block_stored(self, meta: BlockMeta, replica_id: str) -> kvstore_pb2.KvEvent | None:
        with self._lock:
            known = self._blocks.get(meta.block_hash)
            if known is None:
                self._blocks[meta.block_hash] = replace(meta)
            else:
                known.last_access_ms = meta.last_access_ms
            holders = self._locations.setdefault(meta.block_hash, set())
            first = not holders
            holders.add(replica_id)
            return self._append(stored_event(meta)) if first else None

    def block_dropped(
        self, block_hash: bytes, replica_id: str, *, keep_metadata: bool
    ) -> kvstore_pb2.KvEvent | None:
        with self._lock:
            return self._dropped(block_hash, replica_id, keep_metadata)

    def _dropped(self, block_hash: bytes, replica_id: str, keep_metadata: bool) -> kvstore_pb2.KvEvent | None:
        holders = self._locations.get(block_hash)
        if not holders or replica_id not in holders:
            return None
        holders.discard(replica_id)
        if holders:
            return None
        del self._locations[block_hash]
        if not keep_metadata:
            self._blocks.pop(block_hash, None)
        return self._append(removed_event(block_hash))

    def block_meta(self, block_hash: bytes) -> BlockMeta | None:
        with self._lock:
            meta = self._blocks.get(block_hash)
            return replace(meta) if meta else None

    def block_locations(self, block_hash: bytes) -> set[str]:
        with self._lock:
            return set(self._locations.get(block_hash, ()))

    def touch(self, block_hashes: Sequence[bytes], now_ms: int) -> None:
        with self._lock:
            for block_hash in block_hashes:
                meta = self._blocks.get(block_hash)
                if meta is not None:
                    meta.last_access_ms = now_ms

    def put_lease(self, lease: LeaseRecord) -> None:
        with self._lock:
            self._leases[lease.lease_id] = lease

    def delete_lease(self, lease_id: str) -> None:
        with self._lock:
            self._leases.pop(lease_id, None)

    def leases_of(self, replica_id: str) -> list[LeaseRecord]:
        with self._lock:
            return [lease for lease in self._leases.values() if lease.replica_id == replica_id]

    def _forget_payloads(self, replica_id: str) -> list[kvstore_pb2.KvEvent]:
        held = [h for h, holders in self._locations.items() if replica_id in holders]
        events = [self._dropped(h, replica_id, keep_metadata=True) for h in held]
        return [event for event in events if event is not None]

    def join(self, replica_id: str, heartbeat_ttl_ms: int) -> list[kvstore_pb2.KvEvent]:
        with self._lock:
            return self._forget_payloads(replica_id)

    def heartbeat(self, replica_id: str, heartbeat_ttl_ms: int) -> bool:
        return True

    def sweep_dead_replicas(self) -> list[kvstore_pb2.KvEvent]:
        return []

    def leave(self, replica_id: str) -> list[kvstore_pb2.KvEvent]:
        with self._lock:
            for lease_id in [i for i, lease in self._leases.items() if lease.replica_id == replica_id]:
                del self._leases[lease_id]
            return self._forget_payloads(replica_id)

    def events_after(self, sequence: int, limit: int) -> list[kvstore_pb2.KvEvent]:
        with self._lock:
            if not self._events or sequence >= self._sequence:
                return []
            first = self._events[0].sequence  # sequences in the log are consecutive
            start = max(0, sequence + 1 - first)
            return [self._events[i] for i in range(start, min(len(self._events), start + limit))]

    def close(self) -> None:
        pass
