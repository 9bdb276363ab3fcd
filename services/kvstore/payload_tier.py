"""The host-memory payload tier: block payloads in shared-memory slabs.

Every payload lives in a slot of a shared-memory segment ("slab") owned by
the store, so a reader on the same host can map the segment and copy the
block out directly (the shm transport) while its lease pins the block. Slabs
are grouped by slot size: within a mesh every full block has the same layout,
hence the same size, so in practice there is one size class and no
fragmentation. A slab whose slots are all free is unlinked (except the last
one of its class, kept warm for the next put).

The tier only allocates and frees; what is stored where, and when it may be
freed, is the registry's business. It is not thread-safe on its own: the
registry calls it under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.kvstore.shm import ShmSegment, remove_stale_segments, segment_name

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SEGMENT_KIND = "kv"


@dataclass(frozen=True)
class Slot:
    """Where one payload lives: ``size`` bytes at ``offset`` of segment ``segment``."""

    segment: str
    offset: int
    size: int


@dataclass
class _Slab:
    segment: ShmSegment
    slot_size: int
    free_offsets: list[int]
    num_slots: int


@dataclass
class _SizeClass:
    slabs: dict[str, _Slab] = field(default_factory=dict)
    # Slabs with at least one free slot, oldest first (a dict as an ordered set).
    with_free: dict[str, None] = field(default_factory=dict)


class PayloadTier:
    def __init__(self, tag: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        """``tag`` (the replica id) names the segments, so a restart can find its predecessor's."""
        self.tag = tag
        self.segment_bytes = segment_bytes
        self._classes: dict[int, _SizeClass] = {}
        self._slab_of: dict[str, _Slab] = {}
        # A predecessor killed without cleanup left its segments behind; they hold
        # payloads nobody can reach any more.
        self.removed_stale = remove_stale_segments(SEGMENT_KIND, tag)

    def allocate(self, size: int) -> Slot:
        """A slot of ``size`` bytes; raises ``ShmError`` when shared memory is exhausted."""
        if size <= 0:
            raise ValueError("payload size must be positive")
        size_class = self._classes.setdefault(size, _SizeClass())
        if not size_class.with_free:
            num_slots = max(1, self.segment_bytes // size)
            segment = ShmSegment.create(segment_name(SEGMENT_KIND, self.tag), num_slots * size)
            slab = _Slab(segment, size, [i * size for i in reversed(range(num_slots))], num_slots)
            size_class.slabs[segment.name] = slab
            size_class.with_free[segment.name] = None
            self._slab_of[segment.name] = slab
        name = next(iter(size_class.with_free))
        slab = size_class.slabs[name]
        offset = slab.free_offsets.pop()
        if not slab.free_offsets:
            del size_class.with_free[name]
        return Slot(name, offset, size)

    def free(self, slot: Slot) -> None:
        slab = self._slab_of[slot.segment]
        size_class = self._classes[slab.slot_size]
        slab.free_offsets.append(slot.offset)
        size_class.with_free[slot.segment] = None
        if len(slab.free_offsets) == slab.num_slots and len(size_class.slabs) > 1:
            del size_class.slabs[slot.segment], size_class.with_free[slot.segment]
            del self._slab_of[slot.segment]
            slab.segment.unlink()
            slab.segment.close()

    def view(self, slot: Slot) -> memoryview:
        """The slot's bytes, writable; valid until the slot is freed."""
        buffer = self._slab_of[slot.segment].segment.buffer()
        return buffer[slot.offset : slot.offset + slot.size]

    @property
    def num_segments(self) -> int:
        return len(self._slab_of)

    @property
    def segment_names(self) -> list[str]:
        return list(self._slab_of)

    def close(self) -> None:
        """Unlink every segment; payloads are gone after this."""
        for slab in self._slab_of.values():
            slab.segment.unlink()
            slab.segment.close()
        self._classes.clear()
        self._slab_of.clear()
