"""The metadata backend interface: what the registry keeps outside its own process.

Metadata is everything about blocks except their bytes: per block its size,
checksum, layout, producer, parent and last access, plus *where* its payload
lives (the set of store replicas holding a copy); the leases each replica
granted; the mesh's model identity and worker list; and the event log.

A payload lives only in the memory of the replica that stored it, so the
replica id in a block's location set is the whole truth of "who can serve it".
A replica's ids leave the sets when it evicts or drops a block, when it stops
(``leave``), when it restarts under the same id (``join``), and when another
replica finds it dead (``sweep_dead_replicas``, by its heartbeat key).
Block metadata that lost its last location only because a process went away
is kept (so a reader can be told the payload was lost rather than never
stored); an eviction or a failed checksum deletes it.

Events are appended by the backend itself, atomically with the location
change that causes them: ``stored`` when a block gains its first location,
``removed`` when it loses its last one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from tandem._proto.tandem.v1 import common_pb2, kvstore_pb2

# The event log keeps this many of the newest events for replay.
EVENT_LOG_LIMIT = 100_000


@dataclass
class BlockMeta:
    block_hash: bytes
    parent_hash: bytes
    size_bytes: int
    checksum: bytes
    layout: common_pb2.BlockLayout
    producer_id: str
    last_access_ms: int


@dataclass
class LeaseRecord:
    lease_id: str
    holder_id: str
    replica_id: str  # the replica that granted it: the one holding the pinned payloads
    block_hashes: tuple[bytes, ...]
    expires_at_ms: int


class MetadataBackend(ABC):
    # -- mesh identity and membership ------------------------------------------------

    @abstractmethod
    def claim_identity(self, identity: common_pb2.ModelIdentity) -> common_pb2.ModelIdentity:
        """Set the mesh identity unless one is set (atomically); return the mesh's identity."""

    @abstractmethod
    def identity(self) -> common_pb2.ModelIdentity | None: ...

    @abstractmethod
    def put_worker(self, worker: kvstore_pb2.WorkerInfo) -> None:
        """Add or replace (by worker id) a registered worker."""

    @abstractmethod
    def workers(self) -> list[kvstore_pb2.WorkerInfo]:
        """Registered workers, by worker id."""

    # -- blocks ----------------------------------------------------------------------

    @abstractmethod
    def block_stored(self, meta: BlockMeta, replica_id: str) -> kvstore_pb2.KvEvent | None:
        """Record that ``replica_id`` holds the payload; the ``stored`` event if it is the first holder."""

    @abstractmethod
    def block_dropped(
        self, block_hash: bytes, replica_id: str, *, keep_metadata: bool
    ) -> kvstore_pb2.KvEvent | None:
        """Record that ``replica_id`` no longer holds it; the ``removed`` event if none does now."""

    @abstractmethod
    def block_meta(self, block_hash: bytes) -> BlockMeta | None: ...

    @abstractmethod
    def block_locations(self, block_hash: bytes) -> set[str]: ...

    @abstractmethod
    def touch(self, block_hashes: Sequence[bytes], now_ms: int) -> None:
        """Update the last access time of the blocks that have metadata."""

    # -- leases ----------------------------------------------------------------------

    @abstractmethod
    def put_lease(self, lease: LeaseRecord) -> None: ...

    @abstractmethod
    def delete_lease(self, lease_id: str) -> None: ...

    @abstractmethod
    def leases_of(self, replica_id: str) -> list[LeaseRecord]: ...

    # -- replicas --------------------------------------------------------------------

    @abstractmethod
    def join(self, replica_id: str, heartbeat_ttl_ms: int) -> list[kvstore_pb2.KvEvent]:
        """Announce a starting replica; forget payloads a previous process under this id held.

        Its leases are kept: a holder that comes back with one gets clean
        misses for the lost payloads, and the lease expires on its own.
        """

    @abstractmethod
    def heartbeat(self, replica_id: str, heartbeat_ttl_ms: int) -> bool:
        """Keep the replica alive; False when it had already been given up for dead."""

    @abstractmethod
    def sweep_dead_replicas(self) -> list[kvstore_pb2.KvEvent]:
        """Forget the payloads and leases of replicas whose heartbeat expired."""

    @abstractmethod
    def leave(self, replica_id: str) -> list[kvstore_pb2.KvEvent]:
        """A replica stops: forget its payloads and leases."""

    # -- events ----------------------------------------------------------------------

    @abstractmethod
    def events_after(self, sequence: int, limit: int) -> list[kvstore_pb2.KvEvent]:
        """Up to ``limit`` retained events with a sequence above ``sequence``, in order."""

    @abstractmethod
    def close(self) -> None: ...


def stored_event(meta: BlockMeta) -> kvstore_pb2.KvEvent:
    """A ``stored`` event without its sequence (the backend assigns it)."""
    return kvstore_pb2.KvEvent(
        stored=kvstore_pb2.BlockStored(
            block_hash=meta.block_hash, parent_hash=meta.parent_hash, producer_id=meta.producer_id
        )
    )


def removed_event(block_hash: bytes) -> kvstore_pb2.KvEvent:
    return kvstore_pb2.KvEvent(removed=kvstore_pb2.BlockRemoved(block_hash=block_hash))
