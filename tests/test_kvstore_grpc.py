"""The kvstore over real gRPC on loopback: both transports, errors, leases, events, health, reflection."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.kvstore.client import BlockMiss, BlockPayload, KvStoreClient
from services.kvstore.errors import InvalidBlockError, LeaseNotFoundError, MeshMismatchError, StoreFullError
from services.kvstore.layout import BlockLayout, ModelIdentity
from services.kvstore.server import KvStoreServer, serve_kvstore
from services.kvstore.transport.grpc_stream import DEFAULT_CHUNK_BYTES
from tests.kvstore_helpers import (
    BLOCK_BYTES,
    FAST,
    IDENTITY,
    LAYOUT,
    hashes_of,
    make_chain,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("no_shm_leaks")


@pytest.fixture(params=["grpc", "shm"])
def client(request: pytest.FixtureRequest, kvstore: KvStoreServer) -> Iterator[KvStoreClient]:
    with KvStoreClient(kvstore.address, request.param, timeout_s=10) as client:
        yield client


def test_put_lookup_acquire_get_release_round_trip(client: KvStoreClient) -> None:
    chain = make_chain(5, seed=100)
    assert client.put_blocks(chain).num_stored == 5
    assert client.put_blocks(chain[:2]).num_duplicates == 2
    assert client.lookup(hashes_of(chain)) == 5
    lease = client.acquire(hashes_of(chain), holder_id="decode-0/req-1", ttl_ms=5_000)
    assert (lease.num_acquired, len(lease.lease_id) > 0) == (5, True)
    got = client.get_blocks(lease)
    assert all(isinstance(item, BlockPayload) for item in got)
    for sent, received in zip(chain, got):
        assert received.block_hash == sent.block_hash and received.parent_hash == sent.parent_hash
        assert received.layout == LAYOUT
        assert torch.equal(received.data, sent.data)
    assert client.release(lease) and not client.release(lease)
    stats = client.stats()
    assert (stats.num_blocks, stats.puts, stats.duplicate_puts, stats.gets, stats.num_leases) == (5, 5, 2, 5, 0)


def test_multi_chunk_payloads_round_trip(client: KvStoreClient) -> None:
    # A 2.6 MB block: more than one gRPC data chunk each way.
    layout = BlockLayout("float32", num_layers=4, num_kv_heads=8, head_dim=128, block_size=80)
    assert layout.size_bytes > DEFAULT_CHUNK_BYTES
    server_capacity = 64 * BLOCK_BYTES
    assert layout.size_bytes > server_capacity  # so use a store of its own
    with (
        serve_kvstore("127.0.0.1:0", capacity_bytes=4 * layout.size_bytes, schedule=FAST) as server,
        KvStoreClient(server.address, client.transport.name) as big_client,
    ):
        chain = make_chain(2, seed=101, layout=layout)
        big_client.put_blocks(chain)
        lease = big_client.acquire(hashes_of(chain), "reader", ttl_ms=5_000)
        got = big_client.get_blocks(lease)
        assert [torch.equal(g.data, c.data) for g, c in zip(got, chain)] == [True, True]
        big_client.release(lease)


def test_get_reports_misses_and_unknown_leases(client: KvStoreClient) -> None:
    chain = make_chain(3, seed=102)
    client.put_blocks(chain[:2])
    lease = client.acquire(hashes_of(chain), "reader", ttl_ms=5_000)
    assert lease.num_acquired == 2
    got = client.get_blocks(lease, hashes_of(chain))
    assert isinstance(got[0], BlockPayload) and isinstance(got[1], BlockPayload)
    assert got[2] == BlockMiss(chain[2].block_hash, "not covered by the lease")
    client.release(lease)
    with pytest.raises(LeaseNotFoundError, match="unknown"):
        client.get_blocks(lease)
    assert client.acquire(hashes_of(chain[2:]), "reader").lease_id == ""


def test_a_put_that_cannot_fit_is_refused(client: KvStoreClient) -> None:
    chain = make_chain(64, seed=103)
    client.put_blocks(chain)
    lease = client.acquire(hashes_of(chain), "pinning-everything", ttl_ms=10_000)
    assert lease.num_acquired == 64
    with pytest.raises(StoreFullError) as failure:
        client.put_blocks(make_chain(1, seed=104))
    assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    client.release(lease)
    assert client.put_blocks(make_chain(1, seed=104)).num_stored == 1
    assert client.stats().evictions == 1


def test_a_block_not_matching_its_layout_is_refused_before_sending(client: KvStoreClient) -> None:
    block = make_chain(1, seed=105)[0]
    short = BlockPayload(block.block_hash, b"", LAYOUT, block.data[:-1].clone())
    with pytest.raises(InvalidBlockError, match="layout needs 512"):
        client.put_blocks([short])


def test_a_corrupted_stored_payload_comes_back_as_a_miss(client: KvStoreClient, kvstore: KvStoreServer) -> None:
    chain = make_chain(2, seed=106)
    client.put_blocks(chain)
    lease = client.acquire(hashes_of(chain), "reader", ttl_ms=5_000)
    registry = kvstore.registry
    registry.stored_view(chain[0].block_hash)[100] ^= 0x40
    got = client.get_blocks(lease)
    assert isinstance(got[0], BlockMiss) and "checksum mismatch" in got[0].reason
    assert torch.equal(got[1].data, chain[1].data)
    stats = client.stats()
    assert (stats.checksum_failures, stats.payload_misses, stats.num_blocks) == (1, 1, 1)
    assert client.lookup(hashes_of(chain)) == 0
    client.release(lease)


def test_registration_refuses_a_different_identity(kvstore: KvStoreServer) -> None:
    with KvStoreClient(kvstore.address) as client:
        assert client.register("prefill-0", "prefill", "10.0.0.1:7001", IDENTITY) == IDENTITY
        assert client.register("router", "router", "10.0.0.9:8000", None) == IDENTITY
        cases = {
            "block_size: worker has '16', mesh has '4'": BlockLayout("float16", 2, 2, 8, 16),
            "dtype: worker has 'KV_DTYPE_BFLOAT16', mesh has 'KV_DTYPE_FLOAT16'": BlockLayout("bfloat16", 2, 2, 8, 4),
        }
        for message, layout in cases.items():
            with pytest.raises(MeshMismatchError, match=message):
                client.register("decode-0", "decode", "10.0.0.2:7002", ModelIdentity(IDENTITY.model_fingerprint, layout))
        with pytest.raises(MeshMismatchError, match="model_fingerprint: worker has 'other', mesh has 'test-model") as err:
            client.register("decode-0", "decode", "10.0.0.2:7002", ModelIdentity("other", LAYOUT))
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "decode-0" in str(err.value)
        # served_model_name carries no KV meaning, so it may differ.
        client.register("decode-1", "decode", "10.0.0.3:7003", ModelIdentity(IDENTITY.model_fingerprint, LAYOUT, "alias"))
        members = client.list_workers()
        assert [(w.worker_id, w.role, w.address) for w in members.workers] == [
            ("decode-1", "decode", "10.0.0.3:7003"),
            ("prefill-0", "prefill", "10.0.0.1:7001"),
            ("router", "router", "10.0.0.9:8000"),
        ]
        assert members.identity == IDENTITY


def test_leases_of_dead_holders_expire(kvstore: KvStoreServer) -> None:
    with KvStoreClient(kvstore.address) as client:
        chain = make_chain(2, seed=107)
        client.put_blocks(chain)
        client.acquire(hashes_of(chain), "holder-that-dies", ttl_ms=150)
        assert client.stats().num_pinned_blocks == 2
        wait_until(lambda: client.stats().expired_leases == 1, timeout_s=5)
        stats = client.stats()
        assert (stats.num_leases, stats.num_pinned_blocks) == (0, 0)


def test_watch_events_replays_then_follows_live(kvstore: KvStoreServer) -> None:
    with KvStoreClient(kvstore.address) as client:
        chain = make_chain(3, seed=108)
        client.put_blocks(chain[:2])
        with client.watch_events(after_sequence=0) as watch:
            events = iter(watch)
            replayed = [next(events), next(events)]
            assert [e.sequence for e in replayed] == [1, 2]
            assert [e.stored.block_hash for e in replayed] == hashes_of(chain[:2])
            assert replayed[1].stored.parent_hash == chain[0].block_hash
            assert replayed[0].stored.producer_id == client.producer_id
            client.put_blocks(chain[2:])
            live = next(events)
            assert (live.sequence, live.stored.block_hash) == (3, chain[2].block_hash)
        registry = kvstore.registry
        registry.stored_view(chain[2].block_hash)[0] ^= 1
        lease = client.acquire(hashes_of(chain), "reader", ttl_ms=5_000)
        client.get_blocks(lease)
        with client.watch_events(after_sequence=2) as watch:
            events = iter(watch)
            assert next(events).sequence == 3
            removed = next(events)
            assert (removed.sequence, removed.removed.block_hash) == (4, chain[2].block_hash)


def test_health_and_reflection_answer(kvstore: KvStoreServer) -> None:
    with grpc.insecure_channel(kvstore.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tandem.v1.KvStore"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "tandem.v1.KvStore" in database.get_services()
        assert database.FindFileContainingSymbol("tandem.v1.KvStore").name == "tandem/v1/kvstore.proto"


def test_stop_is_clean_with_watchers_attached() -> None:
    server = serve_kvstore("127.0.0.1:0", capacity_bytes=8 * BLOCK_BYTES, schedule=FAST)
    client = KvStoreClient(server.address, "shm")
    client.put_blocks(make_chain(2, seed=109))
    watch = client.watch_events()
    next(iter(watch))
    started = time.monotonic()
    server.stop(grace=0.5)
    assert time.monotonic() - started < 5
    assert server.registry.tier.num_segments == 0
    client.close()
