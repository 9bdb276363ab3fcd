"""The registry core: which blocks this store process holds, their leases, eviction.

Pure Python (no gRPC): the servicer translates RPCs into these calls.

Lifecycle:
  1. ``start``: join the metadata backend (forgetting payloads a previous
     process under this replica id held) and reload this replica's leases.
  2. Serving. A put is ``begin_put`` (validate, evict to make room, reserve a
     slot), the caller writes the payload into the slot, ``commit_put``
     (verify the checksum, publish). A read is ``open_read`` (lease check,
     checksum verified) ... ``close_read``. The server's maintenance thread
     calls ``reap_expired_leases`` and ``heartbeat``.
  3. ``close``: leave the backend and unlink the payload tier.

One lock guards the local state; metadata calls that change locations run
under it too, so the event order matches the order of the changes.
Checksums are computed outside the lock, on slots pinned by a reader count.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from services.kvstore.errors import (
    CorruptPayloadError,
    InvalidBlockError,
    LeaseNotFoundError,
    MeshMismatchError,
    StoreFullError,
)
from services.kvstore.event_feed import EventFeed
from services.kvstore.layout import HASH_BYTES, layout_mismatches, layout_size_bytes
from services.kvstore.leases import LeaseTable
from services.kvstore.mesh import MeshMembership
from services.kvstore.metadata import BlockMeta, LeaseRecord, MetadataBackend
from services.kvstore.payload_tier import PayloadTier, Slot
from services.kvstore.registry_types import BlockRead, LeaseGrant, PendingPut, RegistryCounters, ResidentBlock
from services.kvstore.shm import ShmError
from tandem._proto.tandem.v1 import kvstore_pb2

DEFAULT_LEASE_TTL_MS = 30_000
HEARTBEAT_TTL_MS = 10_000


@dataclass
class RegistryConfig:
    capacity_bytes: int
    replica_id: str
    default_lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    heartbeat_ttl_ms: int = HEARTBEAT_TTL_MS


class BlockRegistry:
    def __init__(
        self,
        config: RegistryConfig,
        metadata: MetadataBackend,
        tier: PayloadTier,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metadata = metadata
        self.tier = tier
        self.mesh = MeshMembership(metadata)
        self.events = EventFeed(metadata)
        self.counters = RegistryCounters()
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently used first; the eviction order.
        self._resident: OrderedDict[bytes, ResidentBlock] = OrderedDict()
        self._leases = LeaseTable()
        self._bytes_used = 0  # resident payloads plus reserved slots of puts in flight

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.events.published(self.metadata.join(self.config.replica_id, self.config.heartbeat_ttl_ms))
        now = self._now_ms()
        with self._lock:
            for lease in self.metadata.leases_of(self.config.replica_id):
                if lease.expires_at_ms > now:
                    self._leases.add(lease)

    def close(self) -> None:
        self.events.published(self.metadata.leave(self.config.replica_id))
        self.events.close()
        with self._lock:
            self._resident.clear()
            self.tier.close()
        self.metadata.close()

    # -- lookups and puts ------------------------------------------------------------

    def lookup(self, block_hashes: Sequence[bytes]) -> int:
        with self._lock:
            count = 0
            while count < len(block_hashes) and block_hashes[count] in self._resident:
                count += 1
            self.counters.lookups += 1
            self.counters.lookup_query_blocks += len(block_hashes)
            self.counters.lookup_hit_blocks += count
            return count

    def _validate(self, header: kvstore_pb2.BlockHeader) -> None:
        if len(header.block_hash) != HASH_BYTES:
            raise InvalidBlockError(f"block_hash must be {HASH_BYTES} bytes, got {len(header.block_hash)}")
        if len(header.parent_hash) not in (0, HASH_BYTES):
            raise InvalidBlockError(f"parent_hash must be empty or {HASH_BYTES} bytes")
        if len(header.checksum) != HASH_BYTES:
            raise InvalidBlockError("checksum must be the 32-byte sha256 of the payload")
        expected = layout_size_bytes(header.layout)
        if expected == 0 or header.size_bytes != expected:
            raise InvalidBlockError(f"size_bytes {header.size_bytes} does not match the layout's {expected}")
        mesh = self.mesh.identity()
        if mesh is not None and mesh.layout != header.layout:
            raise MeshMismatchError("block layout differs from the mesh's: " + "; ".join(
                layout_mismatches(mesh.layout, header.layout)))

    def begin_put(self, header: kvstore_pb2.BlockHeader, producer_id: str) -> PendingPut | None:
        """Reserve a slot for the payload; ``None`` when the block is already stored."""
        self._validate(header)
        size = header.size_bytes
        with self._lock:
            resident = self._resident.get(header.block_hash)
            if resident is not None:
                self.counters.duplicate_puts += 1
                self._resident.move_to_end(header.block_hash)
                return None
            if size > self.config.capacity_bytes:
                raise StoreFullError(f"a {size}-byte block exceeds the store's capacity of {self.config.capacity_bytes}")
            self._make_room(size)
            try:
                slot = self.tier.allocate(size)
            except ShmError as exc:
                raise StoreFullError(f"host shared memory is exhausted: {exc}") from exc
            self._bytes_used += size
            return PendingPut(header, producer_id, slot, self.tier.view(slot))

    def commit_put(self, pending: PendingPut) -> bool:
        """Verify and publish a written payload; False when another put stored it first."""
        if hashlib.sha256(pending.view).digest() != pending.header.checksum:
            self.abort_put(pending)
            raise CorruptPayloadError("payload does not match its checksum; block refused")
        header = pending.header
        with self._lock:
            if header.block_hash in self._resident:
                self._free(pending.slot)
                self.counters.duplicate_puts += 1
                return False
            self._resident[header.block_hash] = ResidentBlock(header, pending.slot, pending.producer_id)
            self.counters.puts += 1
            meta = BlockMeta(
                header.block_hash, header.parent_hash, header.size_bytes, header.checksum,
                header.layout, pending.producer_id, self._now_ms(),
            )
            self.events.published([self.metadata.block_stored(meta, self.config.replica_id)])
        return True

    def abort_put(self, pending: PendingPut) -> None:
        with self._lock:
            self._free(pending.slot)

    def order_chain(self, block_hashes: Sequence[bytes]) -> None:
        """Mark a chain used so that its first block is evicted last.

        Evicting a chain's head orphans the rest (a lookup stops at the first
        missing block), so within a chain the tail should go first.
        """
        with self._lock:
            for block_hash in reversed(block_hashes):
                if block_hash in self._resident:
                    self._resident.move_to_end(block_hash)

    # -- eviction --------------------------------------------------------------------

    def _free(self, slot: Slot) -> None:
        self.tier.free(slot)
        self._bytes_used -= slot.size

    def _make_room(self, size: int) -> None:
        while self._bytes_used + size > self.config.capacity_bytes:
            victim = next(
                (h for h, b in self._resident.items() if b.readers == 0 and not self._leases.is_pinned(h)), None
            )
            if victim is None:
                raise StoreFullError(
                    f"no room for a {size}-byte block: {self._bytes_used} of {self.config.capacity_bytes} bytes "
                    "are leased, being read or being written"
                )
            self._drop(victim, keep_metadata=False)
            self.counters.evictions += 1

    def _drop(self, block_hash: bytes, keep_metadata: bool) -> None:
        block = self._resident.pop(block_hash)
        block.dropped = True
        if block.readers == 0:
            self._free(block.slot)
        event = self.metadata.block_dropped(block_hash, self.config.replica_id, keep_metadata=keep_metadata)
        self.events.published([event])

    # -- leases and reads ------------------------------------------------------------

    def acquire(self, block_hashes: Sequence[bytes], holder_id: str, ttl_ms: int) -> LeaseGrant:
        """Pin the leading stored blocks of the chain; an empty lease id when none is stored."""
        now = self._now_ms()
        with self._lock:
            count = 0
            while count < len(block_hashes) and block_hashes[count] in self._resident:
                count += 1
            if count == 0:
                return LeaseGrant("", 0, 0)
            lease = LeaseRecord(
                uuid.uuid4().hex, holder_id, self.config.replica_id, tuple(block_hashes[:count]),
                now + (ttl_ms or self.config.default_lease_ttl_ms),
            )
            self._leases.add(lease)
        self.order_chain(lease.block_hashes)
        self.metadata.put_lease(lease)
        self.metadata.touch(lease.block_hashes, now)
        return LeaseGrant(lease.lease_id, count, lease.expires_at_ms)

    def release(self, lease_id: str) -> bool:
        with self._lock:
            lease = self._leases.remove(lease_id)
        if lease is not None:
            self.metadata.delete_lease(lease_id)
        return lease is not None

    def check_lease(self, lease_id: str) -> None:
        with self._lock:
            if self._leases.live(lease_id, self._now_ms()) is None:
                raise LeaseNotFoundError(f"lease {lease_id!r} is unknown, released or expired")

    def open_read(self, lease_id: str, block_hash: bytes) -> BlockRead | kvstore_pb2.BlockMiss:
        """The verified payload of a leased block (call ``close_read`` after), or why it cannot be served."""
        reason = ""
        with self._lock:
            lease = self._leases.live(lease_id, self._now_ms())
            block = self._resident.get(block_hash)
            if lease is None:
                reason = "lease expired"
            elif block_hash not in lease.block_hashes:
                reason = "not covered by the lease"
            elif block is None:
                reason = ""  # looked up below, outside the lock: it may ask the backend
            else:
                block.readers += 1
                view = self.tier.view(block.slot)
            if block is None or reason:
                self.counters.payload_misses += 1
        if block is None or reason:
            return kvstore_pb2.BlockMiss(block_hash=block_hash, reason=reason or self._missing_reason(block_hash))
        read = BlockRead(block, view)
        if hashlib.sha256(read.view).digest() == block.header.checksum:
            with self._lock:
                self.counters.gets += 1
            return read
        with self._lock:
            self.counters.checksum_failures += 1
            self.counters.payload_misses += 1
            if self._resident.get(block_hash) is block:
                self._drop(block_hash, keep_metadata=False)
        self.close_read(read)
        return kvstore_pb2.BlockMiss(block_hash=block_hash, reason="checksum mismatch: the stored copy was dropped")

    def _missing_reason(self, block_hash: bytes) -> str:
        if self.metadata.block_meta(block_hash) is not None:
            return "payload lost: this kvstore process does not hold it (restarted, or another replica's block)"
        return "not stored (dropped after a failed checksum, or never put)"

    def close_read(self, read: BlockRead) -> None:
        with self._lock:
            read.block.readers -= 1
            if read.block.dropped and read.block.readers == 0:
                self._free(read.block.slot)

    def touch(self, block_hashes: Sequence[bytes]) -> None:
        """Record an access in the metadata (the local LRU order is kept by the calls above)."""
        self.metadata.touch(block_hashes, self._now_ms())

    # -- maintenance and stats -------------------------------------------------------

    def reap_expired_leases(self) -> int:
        with self._lock:
            expired = self._leases.pop_expired(self._now_ms())
            self.counters.expired_leases += len(expired)
        for lease in expired:
            self.metadata.delete_lease(lease.lease_id)
        return len(expired)

    def heartbeat(self) -> None:
        """Keep this replica alive; if others had given it up for dead, announce its blocks again."""
        if self.metadata.heartbeat(self.config.replica_id, self.config.heartbeat_ttl_ms):
            return
        with self._lock:
            for block in self._resident.values():
                header = block.header
                meta = BlockMeta(
                    header.block_hash, header.parent_hash, header.size_bytes, header.checksum,
                    header.layout, block.producer_id, self._now_ms(),
                )
                self.events.published([self.metadata.block_stored(meta, self.config.replica_id)])

    def sweep_dead_replicas(self) -> None:
        self.events.published(self.metadata.sweep_dead_replicas())

    def ref_count(self, block_hash: bytes) -> int:
        with self._lock:
            return self._leases.ref_count(block_hash)

    def stats(self) -> kvstore_pb2.StatsResponse:
        with self._lock:
            return kvstore_pb2.StatsResponse(
                num_blocks=len(self._resident),
                bytes_used=self._bytes_used,
                capacity_bytes=self.config.capacity_bytes,
                num_leases=len(self._leases),
                num_pinned_blocks=sum(1 for h in self._resident if self._leases.is_pinned(h)),
                replica_id=self.config.replica_id,
                **asdict(self.counters),
            )
