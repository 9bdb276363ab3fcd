"""The embedded mesh (every service a real gRPC server, one process): faults and transports.

A corrupt payload in the registry and payloads lost in a kvstore restart must
both turn into recomputation, never into wrong tokens.
"""

from __future__ import annotations

import random

import pytest

from services.embedded_mesh import start_embedded_mesh
from services.engine.config import EngineConfig
from services.kvstore.server import serve_kvstore
from tandem import LLM, SamplingParams
from tests.mesh_harness import MeshClient, wait_until
from tests.redis_server import redis_prefix, redis_url  # noqa: F401

PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def engine_config(ckpt, overlap_scheduling: bool = False) -> EngineConfig:
    return EngineConfig(model=str(ckpt), dtype="float32", num_kv_blocks=256, max_model_len=512,
                        overlap_scheduling=overlap_scheduling)


@pytest.fixture(scope="module")
def offline(tiny_checkpoints) -> LLM:
    return LLM(model=str(tiny_checkpoints["qwen2"]), dtype="float32", num_kv_blocks=256, max_model_len=512)


def prompt(seed: int, length: int = 90) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 700) for _ in range(length)]


def forget_local_blocks(mesh) -> None:
    """Empty the decode worker's prefix cache so the next request must pull from the registry."""
    mesh.decode.worker.engine.call(lambda e: e.kv_cache.pool.reset_prefix_cache())


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_transports_give_the_offline_tokens(tiny_checkpoints, offline, transport):
    # The gRPC case also runs both workers' engines with overlap scheduling (the GPU default).
    config = engine_config(tiny_checkpoints["qwen2"], overlap_scheduling=transport == "grpc")
    mesh = start_embedded_mesh(config, kv_transport=transport, disagg_min_tokens=16)
    try:
        client = MeshClient(mesh.address, mesh.kvstore.address)
        p = prompt(1)
        assert client.generate(p, PARAMS)[0] == offline.generate([p], PARAMS)[0].outputs[0].token_ids
        load = mesh.decode.worker.counters
        assert load["pulled_blocks"] == (len(p) - 1) // 16  # every full prompt block came through the registry
    finally:
        mesh.stop()


def test_corrupt_payload_is_caught_and_recomputed(tiny_checkpoints, offline):
    mesh = start_embedded_mesh(engine_config(tiny_checkpoints["qwen2"]), disagg_min_tokens=16)
    try:
        client = MeshClient(mesh.address, mesh.kvstore.address)
        p = prompt(2)
        expected = offline.generate([p], PARAMS)[0].outputs[0].token_ids
        assert client.generate(p, PARAMS)[0] == expected
        forget_local_blocks(mesh)
        mesh.prefill.worker.engine.call(lambda e: e.kv_cache.pool.reset_prefix_cache())
        # Flip one byte of the third block's payload inside the store.
        registry = mesh.kvstore.registry
        third = mesh.decode.worker.blocks.chain_hashes(p)[2]
        registry.stored_view(third)[123] ^= 0x10
        # Generate with the first 3 blocks of the prompt going straight to decode.
        again = client.generate(p, PARAMS)[0]
        assert again == expected
        stats = client.stats()
        assert stats.checksum_failures == 1
        assert mesh.decode.worker.counters["missing_blocks"] + mesh.prefill.worker.counters["missing_blocks"] >= 1
    finally:
        mesh.stop()


def test_redis_metadata_survives_restart_and_lost_payloads_are_clean_misses(
    tiny_checkpoints, offline, redis_url, redis_prefix  # noqa: F811
):
    mesh = start_embedded_mesh(
        engine_config(tiny_checkpoints["qwen2"]), disagg_min_tokens=16,
        kvstore_metadata=redis_url, kvstore_redis_prefix=redis_prefix,
    )
    try:
        client = MeshClient(mesh.address, mesh.kvstore.address)
        p = prompt(3)
        expected = offline.generate([p], PARAMS)[0].outputs[0].token_ids
        assert client.generate(p, PARAMS)[0] == expected
        hashes = mesh.decode.worker.blocks.chain_hashes(p)
        assert mesh.kvstore.registry is not None and client.stats().num_blocks >= 5
        address = mesh.kvstore.address
        mesh.kvstore.stop()
        mesh.kvstore = serve_kvstore(address, capacity_bytes=1 << 30, metadata=redis_url, redis_prefix=redis_prefix)
        # Metadata survived: the workers are still registered and the identity is set.
        # (Clients reconnect on their own, after gRPC's reconnect backoff.)
        assert wait_until(lambda: _reachable(mesh.router.kvstore), timeout=30)
        members = mesh.router.kvstore.list_workers()
        assert {w.worker_id for w in members.workers} >= {"prefill-0", "decode-0"}
        assert members.identity is not None
        # The payloads died with the process: the store claims none of them.
        assert mesh.router.kvstore.lookup(hashes) == 0
        forget_local_blocks(mesh)
        mesh.prefill.worker.engine.call(lambda e: e.kv_cache.pool.reset_prefix_cache())
        assert wait_until(lambda: _generates(client, p, expected), timeout=30)
    finally:
        mesh.stop()


def _reachable(kvstore) -> bool:
    from services.kvstore.errors import KvStoreError

    try:
        kvstore.stats()
        return True
    except KvStoreError:
        return False


def _generates(client: MeshClient, p: list[int], expected: list[int]) -> bool:
    import grpc

    try:
        return client.generate(p, PARAMS)[0] == expected
    except grpc.RpcError:
        return False


def test_colocated_worker_serves_both_roles(tiny_checkpoints, offline):
    """A small deployment: one worker started as prefill and decode at once prefills its own prompts."""
    from services.router.server import RouterSettings, start_router
    from services.worker.server import WorkerConfig, start_worker

    kvstore = serve_kvstore("127.0.0.1:0", capacity_bytes=1 << 30)
    worker = start_worker(WorkerConfig(role="both", kvstore=kvstore.address, worker_id="both-0",
                                       engine=engine_config(tiny_checkpoints["qwen2"])))
    router = start_router(RouterSettings(kvstore=kvstore.address, model=str(tiny_checkpoints["qwen2"]),
                                         disagg_min_tokens=16))
    try:
        assert router.pool.wait_until_ready(timeout=30)
        client = MeshClient(router.address, kvstore.address)
        prompts = [prompt(10 + i, length) for i, length in enumerate((5, 40, 90))]
        for p in prompts:
            assert client.generate(p, PARAMS)[0] == offline.generate([p], PARAMS)[0].outputs[0].token_ids
        # Even prompts past the threshold skip the Prefill hop: it would copy KV that the
        # worker's own engine computes and keeps when it decodes.
        assert worker.worker.counters["prefill_requests"] == 0
        assert worker.worker.counters["decode_requests"] == 3
        assert router.router.counters["prefill_on_decode"] == 3
    finally:
        router.stop()
        worker.stop()
        kvstore.stop()


def test_mesh_keeps_serving_while_the_kvstore_is_down(tiny_checkpoints, offline):
    mesh = start_embedded_mesh(engine_config(tiny_checkpoints["qwen2"]), disagg_min_tokens=16)
    try:
        client = MeshClient(mesh.address, mesh.kvstore.address)
        mesh.kvstore.stop()
        p = prompt(4)
        # The registry only saves work: without it, prompts are recomputed, tokens unchanged.
        assert client.generate(p, PARAMS)[0] == offline.generate([p], PARAMS)[0].outputs[0].token_ids
        counters = mesh.prefill.worker.counters
        assert counters["registry_errors"] >= 1 and counters["publish_errors"] >= 1
    finally:
        mesh.stop()


def test_colocated_embedded_mesh_keeps_kv_in_one_engine(tiny_checkpoints, offline):
    mesh = start_embedded_mesh(engine_config(tiny_checkpoints["qwen2"]), colocated=True)
    try:
        client = MeshClient(mesh.address, mesh.kvstore.address)
        p = prompt(7, 120)
        assert client.generate(p, PARAMS)[0] == offline.generate([p], PARAMS)[0].outputs[0].token_ids
        counters = mesh.decode.worker.counters
        assert mesh.prefill is mesh.decode
        assert counters["prefill_requests"] == 0 and counters["published_blocks"] == 0
    finally:
        mesh.stop()
