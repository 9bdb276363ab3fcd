"""The Redis metadata backend against a real Redis: replicas sharing it, and a kvstore killed and restarted."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from services.kvstore.client import BlockMiss, BlockPayload, KvStoreClient
from services.kvstore.errors import MeshMismatchError
from services.kvstore.layout import BlockLayout, ModelIdentity, identity_to_proto, layout_to_proto
from services.kvstore.metadata import BlockMeta, LeaseRecord
from services.kvstore.metadata.redis_backend import RedisMetadata
from services.kvstore.server import KvStoreServer, serve_kvstore
from tests.kvstore_helpers import (
    BLOCK_BYTES,
    FAST,
    IDENTITY,
    LAYOUT,
    KvStoreProcess,
    hashes_of,
    make_chain,
    tandem_segments,
)

pytestmark = pytest.mark.usefixtures("no_shm_leaks")


@pytest.fixture
def backend(redis_url: str, redis_prefix: str) -> Iterator[RedisMetadata]:
    metadata = RedisMetadata(redis_url, redis_prefix)
    yield metadata
    metadata.close()


def _meta(block_hash: bytes) -> BlockMeta:
    return BlockMeta(block_hash, b"", BLOCK_BYTES, b"c" * 32, layout_to_proto(LAYOUT), "producer", 5)


def test_the_first_identity_wins(backend: RedisMetadata) -> None:
    assert backend.identity() is None
    first = identity_to_proto(IDENTITY)
    second = identity_to_proto(ModelIdentity("other", LAYOUT))
    assert backend.claim_identity(first) == first
    assert backend.claim_identity(second) == first


def test_locations_and_events_across_replicas(backend: RedisMetadata) -> None:
    block = b"h" * 32
    assert backend.block_stored(_meta(block), "a").sequence == 1
    assert backend.block_stored(_meta(block), "b") is None  # not the first holder: no event
    assert backend.block_locations(block) == {"a", "b"}
    assert backend.block_dropped(block, "a", keep_metadata=False) is None
    removed = backend.block_dropped(block, "b", keep_metadata=False)
    assert removed.sequence == 2 and removed.removed.block_hash == block
    assert backend.block_meta(block) is None
    events = backend.events_after(0, limit=10)
    assert [e.WhichOneof("event") for e in events] == ["stored", "removed"]
    assert backend.events_after(1, limit=10) == events[1:]


def test_a_dead_replica_is_swept_but_block_metadata_is_kept(backend: RedisMetadata) -> None:
    block = b"d" * 32
    backend.join("doomed", heartbeat_ttl_ms=100)
    backend.block_stored(_meta(block), "doomed")
    backend.put_lease(LeaseRecord("lease-1", "holder", "doomed", (block,), int(time.time() * 1000) + 60_000))
    assert [lease.lease_id for lease in backend.leases_of("doomed")] == ["lease-1"]
    time.sleep(0.15)
    events = backend.sweep_dead_replicas()
    assert [e.removed.block_hash for e in events] == [block]
    assert backend.block_locations(block) == set()
    assert backend.block_meta(block).checksum == b"c" * 32  # kept: readers learn "lost", not "never stored"
    assert backend.leases_of("doomed") == []
    assert not backend.heartbeat("doomed", heartbeat_ttl_ms=100)  # it would know it was given up


@pytest.fixture
def replicas(redis_url: str, redis_prefix: str) -> Iterator[tuple[KvStoreServer, KvStoreServer]]:
    servers = [
        serve_kvstore("127.0.0.1:0", capacity_bytes=16 * BLOCK_BYTES, metadata=redis_url,
                      redis_prefix=redis_prefix, replica_id=name, schedule=FAST)
        for name in ("replica-a", "replica-b")
    ]
    yield servers[0], servers[1]
    for server in servers:
        server.stop(grace=None)


def test_replicas_share_membership_and_events_but_serve_their_own_payloads(
    replicas: tuple[KvStoreServer, KvStoreServer],
) -> None:
    a, b = replicas
    with KvStoreClient(a.address, "shm") as on_a, KvStoreClient(b.address) as on_b:
        on_a.register("prefill-0", "prefill", "h:1", IDENTITY)
        with pytest.raises(MeshMismatchError, match="head_dim"):
            on_b.register("decode-0", "decode", "h:2", ModelIdentity(IDENTITY.model_fingerprint,
                                                                     BlockLayout("float16", 2, 2, 16, 4)))
        assert [w.worker_id for w in on_b.list_workers().workers] == ["prefill-0"]
        chain = make_chain(2, seed=200)
        with on_b.watch_events() as watch:
            on_a.put_blocks(chain)
            events = iter(watch)  # b learns of a's blocks by polling the shared log
            assert [next(events).stored.block_hash for _ in chain] == hashes_of(chain)
        assert on_a.lookup(hashes_of(chain)) == 2
        assert on_b.lookup(hashes_of(chain)) == 0  # b cannot serve a's payloads, so it does not claim them
        on_b.put_blocks(chain)
        assert on_b.stats().replica_id == "replica-b" and on_b.stats().num_blocks == 2


def test_a_killed_and_restarted_kvstore_keeps_metadata_and_reports_lost_payloads(
    redis_url: str, redis_prefix: str
) -> None:
    args = ["--listen", "127.0.0.1:0", "--capacity-bytes", "1MiB", "--redis-url", redis_url,
            "--redis-prefix", redis_prefix, "--replica-id", "restart-test"]
    first = KvStoreProcess(*args)
    chain = make_chain(3, seed=201)
    with KvStoreClient(first.address, "shm", producer_id="prefill-0") as client:
        client.register("prefill-0", "prefill", "h:1", IDENTITY)
        assert client.put_blocks(chain).num_stored == 3
        lease = client.acquire(hashes_of(chain), "decode-0/req-7", ttl_ms=60_000)
        assert isinstance(client.get_blocks(lease)[0], BlockPayload)
    left_behind = {s for s in tandem_segments() if f"-{first.pid}-" in s}
    first.kill()
    assert left_behind and left_behind <= tandem_segments()  # a SIGKILL cleans up nothing

    second = KvStoreProcess(*args)
    metadata = RedisMetadata(redis_url, redis_prefix)
    try:
        assert not left_behind & tandem_segments()  # the successor removed its predecessor's segments
        meta = metadata.block_meta(chain[1].block_hash)  # block metadata survived the restart...
        assert (meta.parent_hash, meta.size_bytes, meta.producer_id) == (chain[0].block_hash, BLOCK_BYTES, "prefill-0")
        assert metadata.block_locations(chain[1].block_hash) == set()  # ...but no process holds the payload
        with KvStoreClient(second.address, "shm", producer_id="prefill-0") as client:
            members = client.list_workers()
            assert [w.worker_id for w in members.workers] == ["prefill-0"] and members.identity == IDENTITY
            assert client.lookup(hashes_of(chain)) == 0
            got = client.get_blocks(lease)  # the lease outlived the process, the payloads did not
            assert all(isinstance(item, BlockMiss) and "payload lost" in item.reason for item in got)
            assert client.stats().payload_misses == 3
            with client.watch_events() as watch:
                events = iter(watch)
                history = [next(events) for _ in range(6)]
            assert [e.WhichOneof("event") for e in history] == ["stored"] * 3 + ["removed"] * 3
            assert [e.sequence for e in history] == list(range(1, 7))
            # Storing again brings the blocks back.
            assert client.put_blocks(chain).num_stored == 3
            assert client.lookup(hashes_of(chain)) == 3
        assert metadata.block_locations(chain[1].block_hash) == {"restart-test"}
    finally:
        metadata.close()
        assert second.terminate() == 0
    assert not {s for s in tandem_segments() if f"-{second.pid}-" in s}
    # A clean stop announces the replica gone.
    assert redis.Redis.from_url(redis_url).sismember(redis_prefix + "replicas", "restart-test") == 0
