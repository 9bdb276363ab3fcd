"""Block layouts and model identities: the plain-data side and their wire messages.

This module imports no torch so the kvstore process starts quickly; the
client adds tensors on top (``services.kvstore.payload``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tandem._proto.tandem.v1 import common_pb2

HASH_BYTES = 32  # sha256 digests: block hashes and payload checksums

DTYPES = {
    "float32": common_pb2.KV_DTYPE_FLOAT32,
    "bfloat16": common_pb2.KV_DTYPE_BFLOAT16,
    "float16": common_pb2.KV_DTYPE_FLOAT16,
}
DTYPE_NAMES = {value: name for name, value in DTYPES.items()}
ELEMENT_BYTES = {
    common_pb2.KV_DTYPE_FLOAT32: 4,
    common_pb2.KV_DTYPE_BFLOAT16: 2,
    common_pb2.KV_DTYPE_FLOAT16: 2,
}


class LayoutLike(Protocol):
    """Anything with a layout's five fields (e.g. the engine's ``KVLayout``)."""

    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int


@dataclass(frozen=True)
class BlockLayout:
    """How one block's payload is laid out: [layers][key, value][block_size][kv_heads][head_dim] of ``dtype``."""

    dtype: str  # "float32", "bfloat16" or "float16"
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown KV dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")

    @property
    def size_bytes(self) -> int:
        return layout_size_bytes(layout_to_proto(self))


@dataclass(frozen=True)
class ModelIdentity:
    """What a worker computes KV with; blocks move only between equal identities."""

    model_fingerprint: str
    layout: BlockLayout
    served_model_name: str = ""


def layout_to_proto(layout: LayoutLike) -> common_pb2.BlockLayout:
    if layout.dtype not in DTYPES:
        raise ValueError(f"unknown KV dtype {layout.dtype!r}; expected one of {sorted(DTYPES)}")
    return common_pb2.BlockLayout(
        dtype=DTYPES[layout.dtype],
        num_layers=layout.num_layers,
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        block_size=layout.block_size,
    )


def layout_from_proto(msg: common_pb2.BlockLayout) -> BlockLayout:
    if msg.dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown KV dtype {msg.dtype}")
    return BlockLayout(DTYPE_NAMES[msg.dtype], msg.num_layers, msg.num_kv_heads, msg.head_dim, msg.block_size)


def layout_size_bytes(msg: common_pb2.BlockLayout) -> int:
    """Payload bytes of one block of this layout (0 when the dtype is unspecified)."""
    elements = msg.num_layers * 2 * msg.block_size * msg.num_kv_heads * msg.head_dim
    return elements * ELEMENT_BYTES.get(msg.dtype, 0)


def identity_to_proto(identity: ModelIdentity) -> common_pb2.ModelIdentity:
    return common_pb2.ModelIdentity(
        model_fingerprint=identity.model_fingerprint,
        layout=layout_to_proto(identity.layout),
        served_model_name=identity.served_model_name,
    )


def identity_from_proto(msg: common_pb2.ModelIdentity) -> ModelIdentity:
    return ModelIdentity(msg.model_fingerprint, layout_from_proto(msg.layout), msg.served_model_name)


def _field_values(identity: common_pb2.ModelIdentity) -> dict[str, str]:
    layout = identity.layout
    return {
        "model_fingerprint": identity.model_fingerprint,
        "dtype": common_pb2.KvDtype.Name(layout.dtype),
        "block_size": str(layout.block_size),
        "num_layers": str(layout.num_layers),
        "num_kv_heads": str(layout.num_kv_heads),
        "head_dim": str(layout.head_dim),
    }


def identity_mismatches(mesh: common_pb2.ModelIdentity, worker: common_pb2.ModelIdentity) -> list[str]:
    """``"field: worker has X, mesh has Y"`` for each KV-relevant field that differs.

    ``served_model_name`` is not compared: it names the model for clients and
    does not change a single byte of KV.
    """
    ours, theirs = _field_values(mesh), _field_values(worker)
    return [
        f"{name}: worker has {theirs[name]!r}, mesh has {ours[name]!r}"
        for name in ours
        if ours[name] != theirs[name]
    ]


def layout_mismatches(mesh: common_pb2.BlockLayout, block: common_pb2.BlockLayout) -> list[str]:
    """Like ``identity_mismatches`` for a block's layout alone."""
    wrap = common_pb2.ModelIdentity
    return [
        text.replace("worker has", "block has")
        for text in identity_mismatches(wrap(layout=mesh), wrap(layout=block))
    ]
