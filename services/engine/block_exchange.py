"""The engine's side of the block registry: which blocks it has, importing and exporting them.

All methods run on the engine thread: they touch the block pool and the KV
cache tensors, which only that thread may change.
"""

from __future__ import annotations

from collections.abc import Container

import torch

from services.engine.block_hash import BlockHash, hash_full_blocks
from services.engine.kv_cache_manager import KVCacheManager
from services.engine.kv_transfer import ExportedBlock, KVLayout, export_blocks, import_blocks, layout_of
from services.engine.model_runner import ModelRunner
from services.engine.scheduler import SchedulerOutput


class BlockExchange:
    def __init__(self, kv_cache: KVCacheManager, runner: ModelRunner) -> None:
        self.kv_cache = kv_cache
        self.runner = runner
        self.layout: KVLayout = layout_of(runner.kv_caches)

    def chain_hashes(self, token_ids: list[int]) -> list[BlockHash]:
        """Keys of every full block of a token sequence (the same keys every service computes)."""
        return hash_full_blocks(token_ids, self.kv_cache.block_size, self.kv_cache.root_hash)

    def count_local(self, hashes: list[BlockHash]) -> int:
        """How many leading blocks of the chain this engine's cache already holds."""
        count = 0
        for block_hash in hashes:
            if self.kv_cache.pool.lookup(block_hash) is None:
                break
            count += 1
        return count

    def preload(self, hashes: list[BlockHash], payloads: list[torch.Tensor]) -> int:
        """Write registry blocks into free cache blocks and key them as cached prefix.

        The blocks end up cached-free: the scheduler then finds them as prefix
        hits like any locally computed block. Stops early when the pool has no
        free block left; returns how many leading blocks are now held locally.
        """
        pool = self.kv_cache.pool
        todo = [(h, p) for h, p in zip(hashes, payloads) if pool.lookup(h) is None]
        todo = todo[: pool.num_free_blocks]
        if todo:
            blocks = pool.allocate(len(todo))
            import_blocks(self.runner.kv_caches, [b.block_id for b in blocks], [p for _, p in todo])
            for block, (block_hash, _) in zip(blocks, todo):
                pool.cache_block(block, block_hash)
            pool.free(reversed(blocks))
        return self.count_local(hashes)

    def computed_in(self, step: SchedulerOutput, request_ids: Container[str]) -> list[ExportedBlock]:
        """Copies of the full blocks the step finished computing, for the named requests."""
        bs = self.kv_cache.block_size
        wanted: list[tuple[str, int, BlockHash, BlockHash | None]] = []
        for chunk in step.chunks:
            request = chunk.request
            if request.request_id not in request_ids:
                continue
            self.kv_cache.update_block_hashes(request)
            end = chunk.num_computed_before + chunk.num_new_tokens
            first = chunk.num_computed_before // bs  # the first block not complete before the step
            for index in range(first, min(end // bs, len(request.block_hashes))):
                parent = request.block_hashes[index - 1] if index else None
                wanted.append((request.request_id, chunk.block_ids[index], request.block_hashes[index], parent))
        if not wanted:
            return []
        payloads = export_blocks(self.runner.kv_caches, [block_id for _, block_id, _, _ in wanted])
        return [ExportedBlock(rid, h, parent, p) for (rid, _, h, parent), p in zip(wanted, payloads)]
