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
from collections.abc import Callable, Sequence
from dataclasses import asdict

from services.kvstore.block_checks import block_meta, validate_header
from services.kvstore.errors import CorruptPayloadError, LeaseNotFoundError
from services.kvstore.event_feed import EventFeed
from services.kvstore.leases import LeaseTable
from services.kvstore.mesh import MeshMembership
from services.kvstore.metadata import LeaseRecord, MetadataBackend
from services.kvstore.payload_tier import PayloadTier
from services.kvstore.registry_types import (
    BlockRead,
    LeaseGrant,
    PendingPut,
    RegistryConfig,
    RegistryCounters,
    ResidentBlock,
)
from services.kvstore.resident import ResidentSet
from tandem._proto.tandem.v1 import kvstore_pb2


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
        self.blocks = ResidentSet(tier, config.capacity_bytes)
        self.mesh = MeshMembership(metadata)
        self.events = EventFeed(metadata)
        self.counters = RegistryCounters()
        self._clock = clock
        self._lock = threading.Lock()
        self._leases = LeaseTable()

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
            self.blocks.close()
        self.metadata.close()

    # -- lookups and puts ------------------------------------------------------------

    def lookup(self, block_hashes: Sequence[bytes]) -> int:
        with self._lock:
            count = self.blocks.leading(block_hashes)
            self.counters.lookups += 1
            self.counters.lookup_query_blocks += len(block_hashes)
            self.counters.lookup_hit_blocks += count
            return count

    def begin_put(self, header: kvstore_pb2.BlockHeader, producer_id: str) -> PendingPut | None:
        """Reserve a slot for the payload; ``None`` when the block is already stored."""
        validate_header(header, self.mesh.identity())
        with self._lock:
            if header.block_hash in self.blocks:
                self.counters.duplicate_puts += 1
                self.blocks.mark_used([header.block_hash])
                return None
            slot = self.blocks.reserve(header.size_bytes, self._leases.is_pinned, self._evict)
            return PendingPut(header, producer_id, slot, self.tier.view(slot))

    def commit_put(self, pending: PendingPut) -> bool:
        """Verify and publish a written payload; False when another put stored it first."""
        if hashlib.sha256(pending.view).digest() != pending.header.checksum:
            self.abort_put(pending)
            raise CorruptPayloadError("payload does not match its checksum; block refused")
        header = pending.header
        with self._lock:
            if header.block_hash in self.blocks:
                self.blocks.free(pending.slot)
                self.counters.duplicate_puts += 1
                return False
            self.blocks.insert(ResidentBlock(header, pending.slot, pending.producer_id))
            self.counters.puts += 1
            meta = block_meta(header, pending.producer_id, self._now_ms())
            self.events.published([self.metadata.block_stored(meta, self.config.replica_id)])
        return True

    def abort_put(self, pending: PendingPut) -> None:
        with self._lock:
            self.blocks.free(pending.slot)

    def order_chain(self, block_hashes: Sequence[bytes]) -> None:
        """Mark a chain just used, its first block to be evicted last (see ``ResidentSet.mark_used``)."""
        with self._lock:
            self.blocks.mark_used(block_hashes)

    def _evict(self, block_hash: bytes) -> None:
        self._drop(block_hash)
        self.counters.evictions += 1

    def _drop(self, block_hash: bytes) -> None:
        """Remove a block for good (evicted or corrupt): its metadata goes too once no replica holds it."""
        self.blocks.remove(block_hash)
        event = self.metadata.block_dropped(block_hash, self.config.replica_id, keep_metadata=False)
        self.events.published([event])

    # -- leases and reads ------------------------------------------------------------

    def acquire(self, block_hashes: Sequence[bytes], holder_id: str, ttl_ms: int) -> LeaseGrant:
        """Pin the leading stored blocks of the chain; an empty lease id when none is stored."""
        now = self._now_ms()
        with self._lock:
            count = self.blocks.leading(block_hashes)
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
            block = self.blocks.get(block_hash)
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
            if self.blocks.get(block_hash) is block:
                self._drop(block_hash)
        self.close_read(read)
        return kvstore_pb2.BlockMiss(block_hash=block_hash, reason="checksum mismatch: the stored copy was dropped")

    def _missing_reason(self, block_hash: bytes) -> str:
        if self.metadata.block_meta(block_hash) is not None:
            return "payload lost: this kvstore process does not hold it (restarted, or another replica's block)"
        return "not stored (dropped after a failed checksum, or never put)"

    def close_read(self, read: BlockRead) -> None:
        with self._lock:
            self.blocks.end_read(read.block)

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
            for block in self.blocks:
                meta = block_meta(block.header, block.producer_id, self._now_ms())
                self.events.published([self.metadata.block_stored(meta, self.config.replica_id)])

    def sweep_dead_replicas(self) -> None:
        self.events.published(self.metadata.sweep_dead_replicas())

    def stored_view(self, block_hash: bytes) -> memoryview | None:
        """The held payload's bytes, writable (fault-injection tests use it); None when not held."""
        with self._lock:
            block = self.blocks.get(block_hash)
            return self.tier.view(block.slot) if block is not None else None

    def ref_count(self, block_hash: bytes) -> int:
        with self._lock:
            return self._leases.ref_count(block_hash)

    def stats(self) -> kvstore_pb2.StatsResponse:
        with self._lock:
            return kvstore_pb2.StatsResponse(
                num_blocks=len(self.blocks),
                bytes_used=self.blocks.bytes_used,
                capacity_bytes=self.config.capacity_bytes,
                num_leases=len(self._leases),
                num_pinned_blocks=sum(1 for b in self.blocks if self._leases.is_pinned(b.header.block_hash)),
                replica_id=self.config.replica_id,
                **asdict(self.counters),
            )
