"""What a put header must satisfy, and the metadata record made from it."""

from __future__ import annotations

from services.kvstore.errors import InvalidBlockError, MeshMismatchError
from services.kvstore.layout import HASH_BYTES, layout_mismatches, layout_size_bytes
from services.kvstore.metadata import BlockMeta
from tandem._proto.tandem.v1 import common_pb2, kvstore_pb2


def validate_header(header: kvstore_pb2.BlockHeader, mesh: common_pb2.ModelIdentity | None) -> None:
    """Raise unless the hashes are sha256-sized, the size matches the layout, and the layout is the mesh's."""
    if len(header.block_hash) != HASH_BYTES:
        raise InvalidBlockError(f"block_hash must be {HASH_BYTES} bytes, got {len(header.block_hash)}")
    if len(header.parent_hash) not in (0, HASH_BYTES):
        raise InvalidBlockError(f"parent_hash must be empty or {HASH_BYTES} bytes")
    if len(header.checksum) != HASH_BYTES:
        raise InvalidBlockError("checksum must be the 32-byte sha256 of the payload")
    expected = layout_size_bytes(header.layout)
    if expected == 0 or header.size_bytes != expected:
        raise InvalidBlockError(f"size_bytes {header.size_bytes} does not match the layout's {expected}")
    # Before any worker registered there is no mesh layout to hold blocks to.
    if mesh is not None and mesh.layout != header.layout:
        mismatches = "; ".join(layout_mismatches(mesh.layout, header.layout))
        raise MeshMismatchError(f"block layout differs from the mesh's: {mismatches}")


def block_meta(header: kvstore_pb2.BlockHeader, producer_id: str, now_ms: int) -> BlockMeta:
    return BlockMeta(
        block_hash=header.block_hash,
        parent_hash=header.parent_hash,
        size_bytes=header.size_bytes,
        checksum=header.checksum,
        layout=header.layout,
        producer_id=producer_id,
        last_access_ms=now_ms,
    )
