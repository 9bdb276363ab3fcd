"""Physical KV blocks: ownership, ref-counts, the prefix-hash index and LRU eviction.

A block is in exactly one of three states:

* **in use**: ``ref_cnt > 0``; one or more requests hold it in their block table.
* **cached-free**: ``ref_cnt == 0`` but it still holds a full block's KV under a
  hash key; a later request with the same prefix can take it back for free.
* **empty-free**: ``ref_cnt == 0`` and no key.

Free blocks (both kinds) sit in one LRU queue. Allocation pops from the front
(least recently freed), evicting the block's key if it had one. Requests free
their blocks tail-first so that a prompt's last, least shareable blocks are
evicted before its first ones.

This module knows nothing about requests or scheduling; the KV cache manager
maps requests to blocks on top of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from services.engine.block_hash import BlockHash


@dataclass(eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    # Set once the block is full and its content is keyed; cleared on eviction.
    block_hash: BlockHash | None = None


class BlockPool:
    """A fixed set of ``num_blocks`` blocks with a hash index and an LRU free queue."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # Insertion order is eviction order: the front is evicted first.
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[BlockHash, KVBlock] = {}
        self.num_evictions = 0

    # -- queries -------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running requests (cached-free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def free_block_ids(self) -> list[int]:
        """Free block ids in eviction order (front first); for tests and stats."""
        return list(self._free)

    def lookup(self, block_hash: BlockHash) -> KVBlock | None:
        """The block holding ``block_hash``'s content, whatever its ref-count."""
        return self._cached.get(block_hash)

    # -- state changes -------------------------------------------------------

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    def allocate(self, num_blocks: int) -> list[KVBlock]:
        """Take ``num_blocks`` blocks from the front of the free queue, evicting keys."""
        if num_blocks > len(self._free):
            raise RuntimeError(f"asked for {num_blocks} blocks, {len(self._free)} free")
        taken: list[KVBlock] = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            self._evict_key(block)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add a reference to blocks found by prefix lookup (reviving cached-free ones)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block, in the order given.

        Blocks whose count reaches zero join the back of the LRU queue and keep
        their key, so they stay reusable until evicted.
        """
        for block in blocks:
            if block.ref_cnt <= 0:
                raise RuntimeError(f"block {block.block_id} freed with ref_cnt {block.ref_cnt}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def cache_block(self, block: KVBlock, block_hash: BlockHash) -> KVBlock:
        """Key a full block by its content hash.

        If another block already holds the same key (two requests computed the
        same prefix concurrently), the first one stays the index entry and the
        duplicate simply ends up evicted when freed. Returns the indexed block.
        """
        if not self.enable_caching:
            return block
        existing = self._cached.get(block_hash)
        if existing is not None:
            return existing
        if block.block_hash is not None:
            return block
        block.block_hash = block_hash
        self._cached[block_hash] = block
        return block

    def reset_prefix_cache(self) -> int:
        """Drop every key held by a free block; returns how many were dropped."""
        dropped = 0
        for block in self._free.values():
            if block.block_hash is not None:
                self._evict_key(block)
                dropped += 1
        return dropped

    def _evict_key(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
            self.num_evictions += 1
        block.block_hash = None
