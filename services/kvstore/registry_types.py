"""Plain data of the registry core: resident blocks, puts and reads in flight, counters."""

from __future__ import annotations

from dataclasses import dataclass

from services.kvstore.payload_tier import Slot
from tandem._proto.tandem.v1 import kvstore_pb2

DEFAULT_LEASE_TTL_MS = 30_000
HEARTBEAT_TTL_MS = 10_000


@dataclass
class RegistryConfig:
    capacity_bytes: int
    replica_id: str
    default_lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    heartbeat_ttl_ms: int = HEARTBEAT_TTL_MS


@dataclass
class ResidentBlock:
    """A block whose payload this process holds."""

    header: kvstore_pb2.BlockHeader  # as put: the checksum here is what every read is verified against
    slot: Slot
    producer_id: str
    readers: int = 0  # reads in flight; like a lease, they keep the slot from being reused
    dropped: bool = False  # removed while being read: the last reader frees the slot


@dataclass
class PendingPut:
    """A reserved slot the caller fills with the payload before ``commit_put``."""

    header: kvstore_pb2.BlockHeader
    producer_id: str
    slot: Slot
    view: memoryview  # writable, exactly ``header.size_bytes`` long


@dataclass
class BlockRead:
    """A verified payload, readable until ``close_read``."""

    block: ResidentBlock
    view: memoryview

    @property
    def header(self) -> kvstore_pb2.BlockHeader:
        return self.block.header


@dataclass
class LeaseGrant:
    lease_id: str  # empty when nothing could be pinned
    num_acquired: int
    expires_at_ms: int


@dataclass
class RegistryCounters:
    """Monotonic counters of this process; the names are StatsResponse's."""

    lookups: int = 0
    lookup_hit_blocks: int = 0
    lookup_query_blocks: int = 0
    puts: int = 0  # blocks newly stored
    duplicate_puts: int = 0  # blocks put that were already stored
    gets: int = 0  # payloads served
    evictions: int = 0
    checksum_failures: int = 0
    payload_misses: int = 0  # requested blocks answered with a BlockMiss
    expired_leases: int = 0
