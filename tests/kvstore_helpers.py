"""Shared pieces of the kvstore tests: small layouts, block chains, stores, a shm leak check."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from services.engine.block_hash import hash_full_blocks, root_block_hash
from services.kvstore.layout import BlockLayout, ModelIdentity
from services.kvstore.payload import BlockPayload
from services.kvstore.server import KvStoreServer, MaintenanceSchedule, serve_kvstore

REPO = Path(__file__).resolve().parent.parent
SHM_DIR = Path("/dev/shm")

# 2 layers x (K, V) x 4 tokens x 2 heads x 8 dims x 2 bytes = 512 bytes a block.
LAYOUT = BlockLayout("float16", num_layers=2, num_kv_heads=2, head_dim=8, block_size=4)
BLOCK_BYTES = LAYOUT.size_bytes
IDENTITY = ModelIdentity("test-model-fingerprint", LAYOUT, "test-model")
FAST = MaintenanceSchedule(interval_s=0.05, heartbeat_every=4, sweep_every=10)


def make_chain(num_blocks: int, seed: int, layout: BlockLayout = LAYOUT) -> list[BlockPayload]:
    """A chain of blocks keyed like the engine keys them, with random payloads."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 32_000, (num_blocks * layout.block_size,), generator=generator).tolist()
    hashes = hash_full_blocks(tokens, layout.block_size, root_block_hash(IDENTITY.model_fingerprint))
    return [
        BlockPayload(
            block_hash=h,
            parent_hash=hashes[i - 1] if i else b"",
            layout=layout,
            data=torch.randint(0, 256, (layout.size_bytes,), dtype=torch.uint8, generator=generator),
        )
        for i, h in enumerate(hashes)
    ]


def hashes_of(blocks: list[BlockPayload]) -> list[bytes]:
    return [b.block_hash for b in blocks]


def tandem_segments() -> set[str]:
    return {p.name for p in SHM_DIR.glob("tandem-*")}


@pytest.fixture
def no_shm_leaks() -> Iterator[None]:
    """Fails the test if it leaves tandem shared-memory segments of this process behind."""
    mine = f"-{os.getpid()}-"
    before = {name for name in tandem_segments() if mine in name}
    yield
    leaked = {name for name in tandem_segments() if mine in name} - before
    assert not leaked, f"leaked shared-memory segments: {sorted(leaked)}"


@pytest.fixture
def kvstore() -> Iterator[KvStoreServer]:
    """An in-process store with the embedded metadata backend, room for 64 small blocks."""
    server = serve_kvstore("127.0.0.1:0", capacity_bytes=64 * BLOCK_BYTES, schedule=FAST)
    yield server
    server.stop(grace=None)


class KvStoreProcess:
    """``tandem kvstore`` as a real child process (``python -m services.kvstore.cli``)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.kvstore.cli", "--log-level", "WARNING", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("kvstore listening on "):
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"kvstore process did not start: {line!r} {err[-2000:]}")
        self.address = line.split()[3]
        self.pid = self.process.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as when a host loses the process."""
        self.process.kill()
        self.process.wait(timeout=10)
        self.process.stdout.close()
        self.process.stderr.close()

    def terminate(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        finally:
            self.process.stdout.close()
            self.process.stderr.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
