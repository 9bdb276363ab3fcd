"""The portable transport: payload bytes inside the gRPC streams, in large chunks.

Works across hosts. Each payload is cut into ``chunk_bytes`` data messages
(a few MiB: large enough that per-message cost is small, far below the 64 MiB
message limit); the store writes them straight into the block's slot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from services.kvstore.payload import BlockPayload, PutResult
from services.kvstore.transport.base import Transport
from tandem._proto.tandem.v1 import kvstore_pb2, kvstore_pb2_grpc

DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024


class GrpcStreamTransport(Transport):
    name = "grpc"
    wire = kvstore_pb2.TRANSPORT_GRPC

    def __init__(
        self,
        stub: kvstore_pb2_grpc.KvStoreStub,
        *,
        timeout_s: float,
        producer_id: str,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__(stub, timeout_s=timeout_s, producer_id=producer_id)
        self._chunk_bytes = chunk_bytes

    def put_blocks(self, blocks: Sequence[BlockPayload]) -> PutResult:
        if not blocks:
            return PutResult(0, 0)
        # Headers (and so checksums and size checks) before the stream opens, so a
        # bad block raises here instead of inside gRPC's request thread.
        prepared = [(block.header(view), view) for block, view in ((b, b.host_bytes()) for b in blocks)]
        return self._send(self._chunks(prepared))

    def _chunks(self, prepared: list[tuple[kvstore_pb2.BlockHeader, memoryview]]) -> Iterator[kvstore_pb2.PutChunk]:
        for index, (header, view) in enumerate(prepared):
            producer_id = self._producer_id if index == 0 else ""
            yield kvstore_pb2.PutChunk(header=header, producer_id=producer_id)
            for start in range(0, len(view), self._chunk_bytes):
                yield kvstore_pb2.PutChunk(data=bytes(view[start : start + self._chunk_bytes]))
