"""The store's side of a Put stream: headers and payload parts into committed blocks.

A stream is a sequence of blocks, each a ``header`` chunk followed by either
``data`` chunks adding up to ``size_bytes`` or one ``shm`` reference to the
whole payload in the producer's segment. Data is written straight into the
slot reserved for the block (no intermediate buffer); a block already stored
is acknowledged as a duplicate and its data is read and discarded.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.kvstore.errors import InvalidBlockError
from services.kvstore.registry import BlockRegistry
from services.kvstore.registry_types import PendingPut
from services.kvstore.shm import SegmentMapCache, ShmError
from tandem._proto.tandem.v1 import kvstore_pb2


class PutStream:
    def __init__(self, registry: BlockRegistry, producer_segments: SegmentMapCache) -> None:
        self._registry = registry
        self._producer_segments = producer_segments
        self._header: kvstore_pb2.BlockHeader | None = None  # the block being received
        self._pending: PendingPut | None = None  # None while receiving a duplicate
        self._received = 0
        self.num_stored = 0
        self.num_duplicates = 0
        self._chain: list[bytes] = []

    def consume(self, chunks: Iterable[kvstore_pb2.PutChunk]) -> kvstore_pb2.PutResponse:
        producer_id = ""
        try:
            for chunk in chunks:
                producer_id = producer_id or chunk.producer_id
                part = chunk.WhichOneof("part")
                if part == "header":
                    self._start(chunk.header, producer_id)
                elif part == "data":
                    self._write(chunk.data)
                elif part == "shm":
                    self._copy_from_producer(chunk.shm)
                else:
                    raise InvalidBlockError("a PutChunk carries no part")
            if self._header is not None:
                raise self._incomplete()
        finally:
            if self._pending is not None:
                self._registry.abort_put(self._pending)
            self._registry.order_chain(self._chain)
        return kvstore_pb2.PutResponse(num_stored=self.num_stored, num_duplicates=self.num_duplicates)

    def _incomplete(self) -> InvalidBlockError:
        assert self._header is not None
        return InvalidBlockError(
            f"block {self._header.block_hash.hex()[:16]}: got {self._received} of {self._header.size_bytes} bytes"
        )

    def _start(self, header: kvstore_pb2.BlockHeader, producer_id: str) -> None:
        if self._header is not None:
            raise self._incomplete()
        self._pending = self._registry.begin_put(header, producer_id)
        self._header = header
        self._received = 0
        self._chain.append(header.block_hash)
        if self._pending is None:
            self.num_duplicates += 1

    def _write(self, data: bytes) -> None:
        if self._header is None:
            raise InvalidBlockError("payload data before its block header")
        end = self._received + len(data)
        if end > self._header.size_bytes:
            raise InvalidBlockError(f"payload data exceeds the header's size_bytes {self._header.size_bytes}")
        if self._pending is not None:
            self._pending.view[self._received : end] = data
        self._received = end
        if end == self._header.size_bytes:
            self._finish()

    def _copy_from_producer(self, ref: kvstore_pb2.ShmRef) -> None:
        if self._header is None or self._received:
            raise InvalidBlockError("a shared-memory reference must directly follow its block header")
        if ref.size != self._header.size_bytes:
            raise InvalidBlockError(f"shared-memory reference of {ref.size} bytes for a {self._header.size_bytes}-byte block")
        if self._pending is not None:
            try:
                self._pending.view[:] = self._producer_segments.view(ref.segment, ref.offset, ref.size)
            except ShmError as exc:
                raise InvalidBlockError(f"cannot read the producer's shared memory: {exc}") from exc
        self._received = ref.size
        self._finish()

    def _finish(self) -> None:
        pending, self._pending, self._header = self._pending, None, None
        if pending is None:
            return
        if self._registry.commit_put(pending):
            self.num_stored += 1
        else:
            self.num_duplicates += 1
