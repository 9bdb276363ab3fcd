"""The address a worker registers: what routers on other hosts dial, never a wildcard."""

from __future__ import annotations

import socket

import pytest

from services.engine.config import EngineConfig
from services.kvstore.client import KvStoreClient
from services.kvstore.server import serve_kvstore
from services.worker.server import WorkerConfig, advertised_address, start_worker


def test_wildcard_hosts_become_this_hosts_name() -> None:
    name = socket.getfqdn()
    assert advertised_address("0.0.0.0:7101") == f"{name}:7101"
    assert advertised_address("[::]:7101") == f"{name}:7101"
    assert advertised_address("10.0.0.5:7101") == "10.0.0.5:7101"
    assert advertised_address("127.0.0.1:7101") == "127.0.0.1:7101"


@pytest.mark.parametrize("advertise", [None, "prefill-0:7101"])
def test_registered_address(tiny_checkpoints, advertise: str | None) -> None:
    kvstore = serve_kvstore("127.0.0.1:0", capacity_bytes=64 << 20)
    worker = None
    try:
        engine = EngineConfig(model=str(tiny_checkpoints["llama"]), dtype="float32", num_kv_blocks=32,
                              max_model_len=64)
        worker = start_worker(WorkerConfig(role="prefill", listen="0.0.0.0:0", kvstore=kvstore.address,
                                           worker_id="p-0", engine=engine, advertise=advertise))
        port = worker.address.rpartition(":")[2]
        members = KvStoreClient(kvstore.address).list_workers()
        assert [(w.worker_id, w.address) for w in members.workers] == [
            ("p-0", advertise or f"{socket.getfqdn()}:{port}")
        ]
    finally:
        if worker is not None:
            worker.stop()
        kvstore.stop()
