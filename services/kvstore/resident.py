"""The payloads one store process holds: LRU order, byte accounting, eviction.

Evictable means: no lease pins the block (the caller says which are pinned)
and no read is in flight. Not thread-safe: the registry calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from services.kvstore.errors import StoreFullError
from services.kvstore.payload_tier import PayloadTier, Slot
from services.kvstore.registry_types import ResidentBlock
from services.kvstore.shm import ShmError


class ResidentSet:
    def __init__(self, tier: PayloadTier, capacity_bytes: int) -> None:
        self.tier = tier
        self.capacity_bytes = capacity_bytes
        self.bytes_used = 0  # resident payloads plus slots reserved for puts in flight
        # Least recently used first: the eviction order.
        self._blocks: OrderedDict[bytes, ResidentBlock] = OrderedDict()

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[ResidentBlock]:
        return iter(list(self._blocks.values()))

    def get(self, block_hash: bytes) -> ResidentBlock | None:
        return self._blocks.get(block_hash)

    def leading(self, block_hashes: Sequence[bytes]) -> int:
        """How many leading blocks of the chain are held."""
        count = 0
        while count < len(block_hashes) and block_hashes[count] in self._blocks:
            count += 1
        return count

    def mark_used(self, block_hashes: Sequence[bytes]) -> None:
        """Most recently used now, the chain's first block last of all.

        Evicting a chain's head orphans the rest (a lookup stops at the first
        missing block), so within a chain the tail should go first.
        """
        for block_hash in reversed(block_hashes):
            if block_hash in self._blocks:
                self._blocks.move_to_end(block_hash)

    def reserve(self, size: int, is_pinned: Callable[[bytes], bool], evict: Callable[[bytes], None]) -> Slot:
        """A slot for a new payload, calling ``evict`` for each LRU block dropped to make room."""
        if size > self.capacity_bytes:
            raise StoreFullError(f"a {size}-byte block exceeds the store's capacity of {self.capacity_bytes}")
        while self.bytes_used + size > self.capacity_bytes:
            victim = next((h for h, b in self._blocks.items() if b.readers == 0 and not is_pinned(h)), None)
            if victim is None:
                raise StoreFullError(
                    f"no room for a {size}-byte block: {self.bytes_used} of {self.capacity_bytes} bytes "
                    "are leased, being read or being written"
                )
            evict(victim)
        try:
            slot = self.tier.allocate(size)
        except ShmError as exc:
            raise StoreFullError(f"host shared memory is exhausted: {exc}") from exc
        self.bytes_used += size
        return slot

    def insert(self, block: ResidentBlock) -> None:
        self._blocks[block.header.block_hash] = block

    def remove(self, block_hash: bytes) -> ResidentBlock:
        """Forget the block; its slot is freed now, or by the last reader still copying from it."""
        block = self._blocks.pop(block_hash)
        block.dropped = True
        if block.readers == 0:
            self.free(block.slot)
        return block

    def end_read(self, block: ResidentBlock) -> None:
        block.readers -= 1
        if block.dropped and block.readers == 0:
            self.free(block.slot)

    def free(self, slot: Slot) -> None:
        self.tier.free(slot)
        self.bytes_used -= slot.size

    def close(self) -> None:
        self._blocks.clear()
        self.tier.close()
        self.bytes_used = 0
