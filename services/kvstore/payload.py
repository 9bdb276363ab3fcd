"""What a kvstore client hands over and gets back: block payloads, misses, leases."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from services.kvstore.errors import InvalidBlockError
from services.kvstore.layout import (
    BlockLayout,
    LayoutLike,
    ModelIdentity,
    layout_from_proto,
    layout_size_bytes,
    layout_to_proto,
)
from tandem._proto.tandem.v1 import kvstore_pb2

ROLES = {
    "prefill": kvstore_pb2.WORKER_ROLE_PREFILL,
    "decode": kvstore_pb2.WORKER_ROLE_DECODE,
    "both": kvstore_pb2.WORKER_ROLE_BOTH,
    "router": kvstore_pb2.WORKER_ROLE_ROUTER,
}
ROLE_NAMES = {value: name for name, value in ROLES.items()}


@dataclass
class BlockPayload:
    """One block's KV bytes (1-D ``torch.uint8``) and the fields of its header.

    ``data`` may also be given as bytes; it is then wrapped as a tensor. A
    CUDA tensor is copied to host memory when sent.
    """

    block_hash: bytes
    parent_hash: bytes  # empty for a sequence's first block
    layout: LayoutLike
    data: torch.Tensor

    def __post_init__(self) -> None:
        if isinstance(self.data, (bytes, bytearray, memoryview)):
            self.data = torch.frombuffer(bytearray(self.data), dtype=torch.uint8)
        if self.data.dtype != torch.uint8 or self.data.dim() != 1:
            raise ValueError(f"a block payload is a 1-D uint8 tensor, got {self.data.dtype} of shape {tuple(self.data.shape)}")

    def host_bytes(self) -> memoryview:
        """The payload as a contiguous host-memory byte view (no copy when already one)."""
        data = self.data
        if data.device.type != "cpu":
            data = data.cpu()
        return memoryview(data.contiguous().numpy())

    def header(self, view: memoryview) -> kvstore_pb2.BlockHeader:
        """The wire header for this payload; ``view`` is ``host_bytes()`` (hashed for the checksum)."""
        layout = layout_to_proto(self.layout)
        if len(view) != layout_size_bytes(layout):
            raise InvalidBlockError(f"payload has {len(view)} bytes; its layout needs {layout_size_bytes(layout)}")
        return kvstore_pb2.BlockHeader(
            block_hash=self.block_hash,
            parent_hash=self.parent_hash,
            layout=layout,
            checksum=hashlib.sha256(view).digest(),
            size_bytes=len(view),
        )


def payload_from_header(header: kvstore_pb2.BlockHeader, data: torch.Tensor) -> BlockPayload:
    return BlockPayload(header.block_hash, header.parent_hash, layout_from_proto(header.layout), data)


@dataclass(frozen=True)
class BlockMiss:
    """A block the store could not serve: the reader recomputes it."""

    block_hash: bytes
    reason: str


@dataclass(frozen=True)
class Lease:
    """Pins the first ``num_acquired`` blocks of the chain asked for, until released or expired."""

    lease_id: str  # empty when nothing was pinned
    num_acquired: int
    expires_at_unix_ms: int
    block_hashes: tuple[bytes, ...] = ()  # the pinned blocks


@dataclass(frozen=True)
class PutResult:
    num_stored: int
    num_duplicates: int


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    role: str  # "prefill", "decode", "both" or "router"
    address: str


@dataclass(frozen=True)
class MeshMembers:
    workers: list[WorkerInfo] = field(default_factory=list)
    identity: ModelIdentity | None = None  # None until the first worker registered


__all__ = [
    "BlockLayout",
    "BlockMiss",
    "BlockPayload",
    "Lease",
    "MeshMembers",
    "ModelIdentity",
    "PutResult",
    "WorkerInfo",
    "payload_from_header",
]
