"""The same-host transport: payloads through shared memory, only ``ShmRef``s on the wire.

Put: the client copies the payloads into a staging segment of its own and
sends one reference per block; the store copies them into its tier before it
answers, after which the staging segment is reused for the next put.
Get: the store answers with references into its own tier segments; the
client maps those (read-only, cached) and copies each payload out while its
lease pins the block, then verifies the copy's checksum.

Staging segments are unlinked by ``close`` (or when the transport is garbage
collected, or at interpreter exit).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence

import torch

from services.kvstore.errors import InvalidBlockError
from services.kvstore.payload import BlockPayload, PutResult
from services.kvstore.shm import SegmentMapCache, ShmError, ShmSegment, remove_stale_segments, segment_name
from services.kvstore.transport.base import Transport
from tandem._proto.tandem.v1 import kvstore_pb2, kvstore_pb2_grpc

# One put stream stages at most this much (a single larger block still goes alone).
MAX_STAGING_BYTES = 64 * 1024 * 1024
_MIN_SEGMENT_BYTES = 4 * 1024 * 1024


def _unlink_all(segments: dict[str, ShmSegment]) -> None:
    for segment in list(segments.values()):
        segment.unlink()
        segment.close()
    segments.clear()


class _StagingPool:
    """Reusable staging segments, each used by one put at a time."""

    def __init__(self, tag: str, max_idle: int = 2) -> None:
        # A producer killed with SIGKILL cannot unlink its staging segments; the
        # next process producing under the same tag (worker id) clears them.
        remove_stale_segments("put", tag)
        self._tag = tag
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[ShmSegment] = []
        self._all: dict[str, ShmSegment] = {}
        self._finalizer = weakref.finalize(self, _unlink_all, self._all)

    def take(self, size: int) -> ShmSegment:
        with self._lock:
            fitting = [s for s in self._idle if s.size >= size]
            if fitting:
                segment = min(fitting, key=lambda s: s.size)
                self._idle.remove(segment)
                return segment
        capacity = max(_MIN_SEGMENT_BYTES, 1 << (size - 1).bit_length())  # powers of two: reuse across sizes
        segment = ShmSegment.create(segment_name("put", self._tag), capacity)
        with self._lock:
            self._all[segment.name] = segment
        return segment

    def give_back(self, segment: ShmSegment) -> None:
        with self._lock:
            self._idle.append(segment)
            if len(self._idle) > self._max_idle:
                smallest = min(self._idle, key=lambda s: s.size)
                self._idle.remove(smallest)
                del self._all[smallest.name]
                smallest.unlink()
                smallest.close()

    def close(self) -> None:
        with self._lock:
            self._idle.clear()
            self._finalizer()


class ShmTransport(Transport):
    name = "shm"
    wire = kvstore_pb2.TRANSPORT_SHM

    def __init__(self, stub: kvstore_pb2_grpc.KvStoreStub, *, timeout_s: float, producer_id: str) -> None:
        super().__init__(stub, timeout_s=timeout_s, producer_id=producer_id)
        self._staging = _StagingPool(producer_id or "client")
        self._store_segments = SegmentMapCache()

    def put_blocks(self, blocks: Sequence[BlockPayload]) -> PutResult:
        stored = duplicates = 0
        for batch in self._batches(blocks):
            result = self._put_batch(batch)
            stored += result.num_stored
            duplicates += result.num_duplicates
        return PutResult(stored, duplicates)

    def _batches(self, blocks: Sequence[BlockPayload]) -> Iterator[list[tuple[BlockPayload, memoryview]]]:
        batch: list[tuple[BlockPayload, memoryview]] = []
        size = 0
        for block in blocks:
            view = block.host_bytes()
            if batch and size + len(view) > MAX_STAGING_BYTES:
                yield batch
                batch, size = [], 0
            batch.append((block, view))
            size += len(view)
        if batch:
            yield batch

    def _put_batch(self, batch: list[tuple[BlockPayload, memoryview]]) -> PutResult:
        headers = [block.header(view) for block, view in batch]
        try:
            segment = self._staging.take(sum(len(view) for _, view in batch))
        except ShmError as exc:
            raise InvalidBlockError(f"cannot stage the put in shared memory: {exc}") from exc
        try:
            staging = segment.buffer()
            chunks = []
            offset = 0
            for index, ((_, view), header) in enumerate(zip(batch, headers)):
                staging[offset : offset + len(view)] = view
                ref = kvstore_pb2.ShmRef(segment=segment.name, offset=offset, size=len(view))
                chunks.append(kvstore_pb2.PutChunk(header=header, producer_id=self._producer_id if index == 0 else ""))
                chunks.append(kvstore_pb2.PutChunk(shm=ref))
                offset += len(view)
            staging.release()
            # The store has copied every payload once Put returns.
            return self._send(chunks)
        finally:
            self._staging.give_back(segment)

    def _read_shm(self, ref: kvstore_pb2.ShmRef) -> torch.Tensor:
        try:
            source = self._store_segments.view(ref.segment, ref.offset, ref.size)
        except ShmError as exc:
            raise InvalidBlockError(f"cannot map the store's shared memory: {exc}") from exc
        data = torch.empty(ref.size, dtype=torch.uint8)
        memoryview(data.numpy())[:] = source
        source.release()
        return data

    def close(self) -> None:
        self._staging.close()
        self._store_segments.close()
