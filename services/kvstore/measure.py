"""Timing block handoff through the kvstore, for the benchmarks.

``measure_transfer`` puts N blocks of a layout and reads them back (acquire,
get, release) on each transport, and reports MB/s (10^6 bytes per second)
of payload. Each repeat uses fresh block hashes, so every put really stores.
Pass the address of a store running in its own process for realistic
numbers: with ``address=None`` a store is started in this process, where
client and server share one interpreter lock.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.kvstore.client import BlockMiss, BlockPayload, KvStoreClient
from services.kvstore.layout import LayoutLike, layout_size_bytes, layout_to_proto


@dataclass(frozen=True)
class TransferTiming:
    transport: str
    num_blocks: int
    block_bytes: int
    put_s: float  # median over repeats
    get_s: float  # acquire + get + release, median over repeats

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def put_mb_s(self) -> float:
        return self.total_bytes / self.put_s / 1e6

    @property
    def get_mb_s(self) -> float:
        return self.total_bytes / self.get_s / 1e6


def _blocks(layout: LayoutLike, count: int, payload: torch.Tensor) -> list[BlockPayload]:
    hashes = [os.urandom(32) for _ in range(count)]
    return [BlockPayload(h, hashes[i - 1] if i else b"", layout, payload[i]) for i, h in enumerate(hashes)]


def _time_one(client: KvStoreClient, layout: LayoutLike, payload: torch.Tensor) -> tuple[float, float]:
    blocks = _blocks(layout, payload.shape[0], payload)
    hashes = [b.block_hash for b in blocks]
    start = time.perf_counter()
    client.put_blocks(blocks)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    lease = client.acquire(hashes, holder_id="measure", ttl_ms=60_000)
    got = client.get_blocks(lease)
    client.release(lease)
    get_s = time.perf_counter() - start
    misses = sum(isinstance(item, BlockMiss) for item in got)
    if lease.num_acquired != len(hashes) or misses:
        raise RuntimeError(f"measurement lost blocks: {lease.num_acquired} leased, {misses} missed")
    return put_s, get_s


def measure_transfer(
    layout: LayoutLike,
    num_blocks: int,
    *,
    address: str | None = None,
    transports: Sequence[str] = ("grpc", "shm"),
    repeats: int = 3,
) -> list[TransferTiming]:
    """One ``TransferTiming`` per transport for ``num_blocks`` blocks of ``layout`` (after one warm-up)."""
    block_bytes = layout_size_bytes(layout_to_proto(layout))
    payload = torch.randint(0, 256, (num_blocks, block_bytes), dtype=torch.uint8)
    server = None
    if address is None:
        from services.kvstore.server import serve_kvstore

        server = serve_kvstore("127.0.0.1:0", capacity_bytes=2 * num_blocks * block_bytes)
        address = server.address
    results = []
    try:
        for transport in transports:
            with KvStoreClient(address, transport, timeout_s=120.0, producer_id="measure") as client:
                _time_one(client, layout, payload[: min(num_blocks, 2)])  # connection and segment set-up
                runs = [_time_one(client, layout, payload) for _ in range(repeats)]
            results.append(
                TransferTiming(
                    transport,
                    num_blocks,
                    block_bytes,
                    statistics.median(r[0] for r in runs),
                    statistics.median(r[1] for r in runs),
                )
            )
    finally:
        if server is not None:
            server.stop()
    return results
