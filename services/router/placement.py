"""Choosing workers: load first, then where a prompt's blocks already are.

Prefill: fewest pending prompt tokens, with a bonus for the worker that
produced the longest run of the prompt's blocks (it holds them in its own cache
and pulls nothing). Producers come from the kvstore's event stream.
Decode: most free KV blocks and fewest running sequences, with a bonus for the
worker that recently decoded the longest run of the prompt's blocks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from services.engine.block_hash import BlockHash
from services.router.worker_pool import WorkerHandle

# How many prompt tokens one locally held block is worth against queued work.
LOCALITY_TOKENS_PER_BLOCK = 16
AFFINITY_CAPACITY = 200_000


class BlockLocality:
    """Which worker last held each block hash (bounded LRU)."""

    def __init__(self, capacity: int = AFFINITY_CAPACITY) -> None:
        self._owner: OrderedDict[BlockHash, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def record(self, hashes: list[BlockHash], worker_id: str) -> None:
        with self._lock:
            for block_hash in hashes:
                self._owner[block_hash] = worker_id
                self._owner.move_to_end(block_hash)
            while len(self._owner) > self._capacity:
                self._owner.popitem(last=False)

    def forget(self, block_hash: BlockHash) -> None:
        with self._lock:
            self._owner.pop(block_hash, None)

    def run_length(self, hashes: list[BlockHash], worker_id: str) -> int:
        """Leading blocks of the chain last seen on ``worker_id``."""
        with self._lock:
            count = 0
            for block_hash in hashes:
                if self._owner.get(block_hash) != worker_id:
                    break
                count += 1
            return count


def pick_prefill(candidates: list[WorkerHandle], hashes: list[BlockHash], locality: BlockLocality) -> WorkerHandle | None:
    def cost(h: WorkerHandle) -> float:
        assert h.load is not None
        queued = h.load.num_pending_tokens + 256 * (h.load.num_running + h.in_flight)
        return queued - LOCALITY_TOKENS_PER_BLOCK * locality.run_length(hashes, h.worker_id)

    return min(candidates, key=cost, default=None)


def pick_decode(
    candidates: list[WorkerHandle], hashes: list[BlockHash], locality: BlockLocality, blocks_needed: int
) -> WorkerHandle | None:
    def cost(h: WorkerHandle) -> float:
        assert h.load is not None
        load = h.load
        # A worker that cannot fit the sequence would preempt: last resort.
        short = max(0, blocks_needed - load.num_free_kv_blocks)
        busy = load.num_running + load.num_waiting + h.in_flight
        held = locality.run_length(hashes, h.worker_id)
        return 1000.0 * short + 4.0 * busy - (load.num_free_kv_blocks / max(1, load.num_total_kv_blocks)) - 0.5 * held

    return min(candidates, key=cost, default=None)
