"""The client-side transport interface: how block payloads travel to and from the store.

The control RPCs (register, lookup, acquire, release, ...) are the client's;
a transport only moves payloads, through the Put and Get streams. Every
payload read is verified against its header's sha256 here, after the
transfer: a mismatch becomes a ``BlockMiss``, never bytes handed to the
caller. A transport is safe to use from several threads.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import ClassVar

import grpc
import torch

from services.kvstore.errors import InvalidBlockError, error_from_rpc
from services.kvstore.payload import BlockMiss, BlockPayload, Lease, PutResult, payload_from_header
from tandem._proto.tandem.v1 import kvstore_pb2, kvstore_pb2_grpc


class Transport(ABC):
    name: ClassVar[str]
    wire: ClassVar[int]  # the kvstore_pb2.Transport asked for in GetRequest

    def __init__(self, stub: kvstore_pb2_grpc.KvStoreStub, *, timeout_s: float, producer_id: str) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._producer_id = producer_id

    @abstractmethod
    def put_blocks(self, blocks: Sequence[BlockPayload]) -> PutResult:
        """Store the blocks (one or more Put streams); duplicates are acknowledged, not re-sent."""

    def get_blocks(self, lease: Lease, block_hashes: Sequence[bytes]) -> Iterator[BlockPayload | BlockMiss]:
        """The leased blocks' payloads in order, each verified; a ``BlockMiss`` for any not served."""
        request = kvstore_pb2.GetRequest(lease_id=lease.lease_id, block_hashes=block_hashes, transport=self.wire)
        try:
            yield from self._decode(self._stub.Get(request, timeout=self._timeout_s))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def close(self) -> None:
        """Free what the transport holds (mappings, staging memory)."""

    def _send(self, chunks: Iterable[kvstore_pb2.PutChunk]) -> PutResult:
        try:
            response = self._stub.Put(iter(chunks), timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return PutResult(response.num_stored, response.num_duplicates)

    def _read_shm(self, ref: kvstore_pb2.ShmRef) -> torch.Tensor:
        """A copy of a payload the store answered by reference (transports that asked for one)."""
        raise InvalidBlockError(f"the store answered with shared memory, but this is the {self.name} transport")

    def _decode(self, chunks: Iterable[kvstore_pb2.GetChunk]) -> Iterator[BlockPayload | BlockMiss]:
        header: kvstore_pb2.BlockHeader | None = None
        buffer = memoryview(b"")
        data = torch.empty(0, dtype=torch.uint8)
        filled = 0
        for chunk in chunks:
            part = chunk.WhichOneof("part")
            if part == "miss":
                yield BlockMiss(chunk.miss.block_hash, chunk.miss.reason)
            elif part == "header":
                header, filled = chunk.header, 0
                data = torch.empty(header.size_bytes, dtype=torch.uint8)
                buffer = memoryview(data.numpy())
            elif header is None:
                raise InvalidBlockError("the store sent payload bytes before their header")
            elif part == "data":
                buffer[filled : filled + len(chunk.data)] = chunk.data
                filled += len(chunk.data)
                if filled >= header.size_bytes:
                    yield _verified(header, data)
                    header = None
            elif part == "shm":
                yield _verified(header, self._read_shm(chunk.shm))
                header = None
        if header is not None:
            raise InvalidBlockError(f"the Get stream ended inside a block ({filled} of {header.size_bytes} bytes)")


def _verified(header: kvstore_pb2.BlockHeader, data: torch.Tensor) -> BlockPayload | BlockMiss:
    if hashlib.sha256(memoryview(data.numpy())).digest() != header.checksum:
        return BlockMiss(header.block_hash, "checksum mismatch after transfer")
    return payload_from_header(header, data)
