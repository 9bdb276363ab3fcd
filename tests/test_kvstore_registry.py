"""The registry core without gRPC: eviction, leases, checksums, validation (a fake clock, no sleeps)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.kvstore.errors import (
    CorruptPayloadError,
    InvalidBlockError,
    LeaseNotFoundError,
    MeshMismatchError,
    StoreFullError,
)
from services.kvstore.layout import BlockLayout, identity_to_proto
from services.kvstore.metadata import MemoryMetadata
from services.kvstore.payload_tier import PayloadTier
from services.kvstore.registry import BlockRegistry
from services.kvstore.registry_types import BlockRead, RegistryConfig
from tandem._proto.tandem.v1 import kvstore_pb2
from tests.kvstore_helpers import BLOCK_BYTES, IDENTITY, hashes_of, make_chain

pytestmark = pytest.mark.usefixtures("no_shm_leaks")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _registry(clock: FakeClock, capacity_blocks: int) -> BlockRegistry:
    registry = BlockRegistry(
        RegistryConfig(capacity_blocks * BLOCK_BYTES, "core-test"), MemoryMetadata(), PayloadTier("core-test"), clock
    )
    registry.start()
    return registry


@pytest.fixture
def registry(clock: FakeClock) -> Iterator[BlockRegistry]:
    registry = _registry(clock, capacity_blocks=4)
    yield registry
    registry.close()


def put(registry: BlockRegistry, blocks: list) -> int:
    """Store blocks the way the servicer does; the number newly stored."""
    stored = 0
    for block in blocks:
        view = block.host_bytes()
        pending = registry.begin_put(block.header(view), "producer")
        if pending is not None:
            pending.view[:] = view
            stored += registry.commit_put(pending)
    registry.order_chain(hashes_of(blocks))
    return stored


def read(registry: BlockRegistry, lease_id: str, block_hash: bytes) -> bytes | kvstore_pb2.BlockMiss:
    item = registry.open_read(lease_id, block_hash)
    if isinstance(item, BlockRead):
        try:
            return bytes(item.view)
        finally:
            registry.close_read(item)
    return item


def removed_hashes(registry: BlockRegistry) -> list[bytes]:
    return [e.removed.block_hash for e in registry.events.events_after(0) if e.HasField("removed")]


def test_lookup_counts_the_longest_stored_prefix(registry: BlockRegistry) -> None:
    chain = make_chain(4, seed=1)
    assert put(registry, chain[:2]) == 2
    assert registry.lookup(hashes_of(chain)) == 2
    assert registry.lookup(hashes_of(chain[1:])) == 1
    assert registry.lookup([]) == 0
    stats = registry.stats()
    assert (stats.lookups, stats.lookup_query_blocks, stats.lookup_hit_blocks) == (3, 7, 3)


def test_duplicates_are_kept_once(registry: BlockRegistry) -> None:
    chain = make_chain(2, seed=2)
    assert put(registry, chain) == 2
    assert put(registry, chain) == 0
    stats = registry.stats()
    assert (stats.puts, stats.duplicate_puts, stats.num_blocks, stats.bytes_used) == (2, 2, 2, 2 * BLOCK_BYTES)


def test_eviction_takes_the_least_recently_used_chain_tail_first(registry: BlockRegistry) -> None:
    a, b, c = make_chain(2, seed=3), make_chain(2, seed=4), make_chain(2, seed=5)
    put(registry, a)
    put(registry, b)
    # Using chain a makes b the least recently used.
    lease = registry.acquire(hashes_of(a), "reader", ttl_ms=1_000)
    registry.release(lease.lease_id)
    put(registry, c[:1])
    assert removed_hashes(registry) == [b[1].block_hash]  # the tail goes first: b's head still serves
    assert registry.lookup(hashes_of(b)) == 1
    put(registry, c[1:])
    assert removed_hashes(registry) == [b[1].block_hash, b[0].block_hash]
    assert registry.lookup(hashes_of(a)) == 2 and registry.lookup(hashes_of(c)) == 2
    assert registry.stats().evictions == 2


def test_leased_blocks_survive_eviction_pressure(registry: BlockRegistry) -> None:
    pinned = make_chain(2, seed=6)
    put(registry, pinned)
    lease = registry.acquire(hashes_of(pinned), "reader", ttl_ms=10_000)
    assert lease.num_acquired == 2
    for seed in range(7, 12):  # many more blocks than fit
        put(registry, make_chain(1, seed=seed))
    assert registry.lookup(hashes_of(pinned)) == 2
    assert registry.stats().num_pinned_blocks == 2
    # Everything pinned and still full: the put is refused rather than evicting a leased block.
    registry.acquire(hashes_of(make_chain(1, seed=11)), "reader", ttl_ms=10_000)
    registry.acquire(hashes_of(make_chain(1, seed=10)), "reader", ttl_ms=10_000)
    with pytest.raises(StoreFullError, match="leased"):
        put(registry, make_chain(1, seed=12))
    assert registry.stats().bytes_used == 4 * BLOCK_BYTES


def test_a_block_larger_than_the_capacity_is_refused(clock: FakeClock) -> None:
    registry = _registry(clock, capacity_blocks=1)
    big = BlockLayout("float32", 2, 2, 8, 4)  # twice the bytes of the test layout
    try:
        with pytest.raises(StoreFullError, match="exceeds the store's capacity"):
            put(registry, make_chain(1, seed=13, layout=big))
    finally:
        registry.close()


def test_reference_counts_follow_live_leases(registry: BlockRegistry) -> None:
    chain = make_chain(2, seed=14)
    put(registry, chain)
    first = registry.acquire(hashes_of(chain), "one", ttl_ms=1_000)
    second = registry.acquire(hashes_of(chain[:1]), "two", ttl_ms=1_000)
    assert [registry.ref_count(h) for h in hashes_of(chain)] == [2, 1]
    assert registry.release(first.lease_id)
    assert not registry.release(first.lease_id)
    assert [registry.ref_count(h) for h in hashes_of(chain)] == [1, 0]
    registry.release(second.lease_id)
    assert registry.stats().num_leases == 0


def test_acquire_pins_only_the_stored_leading_blocks(registry: BlockRegistry) -> None:
    chain = make_chain(3, seed=15)
    put(registry, [chain[0], chain[2]])
    lease = registry.acquire(hashes_of(chain), "reader", ttl_ms=1_000)
    assert lease.num_acquired == 1
    assert read(registry, lease.lease_id, chain[2].block_hash).reason == "not covered by the lease"
    assert registry.acquire(hashes_of(chain[1:2]), "reader", ttl_ms=1_000).lease_id == ""


def test_expired_leases_are_reaped_and_unpin(registry: BlockRegistry, clock: FakeClock) -> None:
    chain = make_chain(1, seed=16)
    put(registry, chain)
    lease = registry.acquire(hashes_of(chain), "dead-holder", ttl_ms=200)
    clock.now += 0.1
    assert registry.reap_expired_leases() == 0
    assert read(registry, lease.lease_id, chain[0].block_hash) == chain[0].data.numpy().tobytes()
    clock.now += 0.2
    # Expired but not yet reaped: already unusable.
    assert read(registry, lease.lease_id, chain[0].block_hash).reason == "lease expired"
    with pytest.raises(LeaseNotFoundError):
        registry.check_lease(lease.lease_id)
    assert registry.reap_expired_leases() == 1
    stats = registry.stats()
    assert (stats.expired_leases, stats.num_leases, registry.ref_count(chain[0].block_hash)) == (1, 0, 0)
    for seed in range(17, 21):
        put(registry, make_chain(1, seed=seed))
    assert registry.lookup(hashes_of(chain)) == 0  # evictable again once the lease was reaped


def test_a_corrupt_payload_is_dropped_and_reported_as_a_miss(registry: BlockRegistry) -> None:
    chain = make_chain(2, seed=21)
    put(registry, chain)
    lease = registry.acquire(hashes_of(chain), "reader", ttl_ms=1_000)
    registry.stored_view(chain[1].block_hash)[7] ^= 0xFF  # a bit flip in host memory
    assert read(registry, lease.lease_id, chain[0].block_hash) == chain[0].data.numpy().tobytes()
    miss = read(registry, lease.lease_id, chain[1].block_hash)
    assert isinstance(miss, kvstore_pb2.BlockMiss) and "checksum mismatch" in miss.reason
    stats = registry.stats()
    assert (stats.checksum_failures, stats.payload_misses, stats.gets, stats.num_blocks) == (1, 1, 1, 1)
    assert stats.bytes_used == BLOCK_BYTES
    assert removed_hashes(registry) == [chain[1].block_hash]
    assert registry.lookup(hashes_of(chain)) == 1
    assert "not stored" in read(registry, lease.lease_id, chain[1].block_hash).reason


def test_a_put_whose_payload_does_not_match_its_checksum_is_refused(registry: BlockRegistry) -> None:
    block = make_chain(1, seed=22)[0]
    view = block.host_bytes()
    pending = registry.begin_put(block.header(view), "producer")
    pending.view[:] = view
    pending.view[0] ^= 1
    with pytest.raises(CorruptPayloadError):
        registry.commit_put(pending)
    stats = registry.stats()
    assert (stats.num_blocks, stats.bytes_used, stats.puts) == (0, 0, 0)


def test_malformed_headers_are_refused(registry: BlockRegistry) -> None:
    block = make_chain(1, seed=23)[0]
    header = block.header(block.host_bytes())
    for field, value, message in [
        ("block_hash", b"short", "block_hash"),
        ("parent_hash", b"x" * 5, "parent_hash"),
        ("checksum", b"", "checksum"),
        ("size_bytes", BLOCK_BYTES + 1, "size_bytes"),
    ]:
        bad = kvstore_pb2.BlockHeader()
        bad.CopyFrom(header)
        setattr(bad, field, value)
        with pytest.raises(InvalidBlockError, match=message):
            registry.begin_put(bad, "producer")


def test_blocks_must_have_the_mesh_layout(registry: BlockRegistry) -> None:
    worker = kvstore_pb2.WorkerInfo(worker_id="w", role=kvstore_pb2.WORKER_ROLE_PREFILL)
    registry.mesh.register(worker, identity_to_proto(IDENTITY))
    other = BlockLayout("float16", 2, 2, 8, 8)
    with pytest.raises(MeshMismatchError, match="block_size: block has '8', mesh has '4'"):
        put(registry, make_chain(1, seed=24, layout=other))


def test_the_payload_tier_unlinks_segments_it_no_longer_needs(clock: FakeClock) -> None:
    tier = PayloadTier("tier-test", segment_bytes=2 * BLOCK_BYTES)
    slots = [tier.allocate(BLOCK_BYTES) for _ in range(5)]
    assert tier.num_segments == 3
    assert len({(s.segment, s.offset) for s in slots}) == 5
    for slot in slots[:4]:
        tier.free(slot)
    assert tier.num_segments == 1  # the empty slabs went; the last one stays
    tier.close()
    assert tier.num_segments == 0
