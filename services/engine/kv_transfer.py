"""Moving whole KV blocks between the paged cache and flat payloads.

A payload holds one block's keys and values for every layer in the order the
``BlockLayout`` message documents: [layers][key, value][block_size][kv_heads][head_dim].
Export copies blocks out of the cache (for the registry); import writes
payloads into freshly allocated blocks and keys them in the prefix cache, so
the scheduler later finds them as ordinary prefix hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.engine.block_hash import BlockHash
from services.engine.models.decoder import KVCache

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True)
class KVLayout:
    """Shape and type of one block's payload; two workers exchange blocks only when equal."""

    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return {v: k for k, v in DTYPE_NAMES.items()}[self.dtype]

    @property
    def payload_shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def payload_bytes(self) -> int:
        count = self.num_layers * 2 * self.block_size * self.num_kv_heads * self.head_dim
        return count * torch.empty((), dtype=self.torch_dtype).element_size()


@dataclass
class ExportedBlock:
    request_id: str  # the request whose step computed it
    block_hash: BlockHash
    parent_hash: BlockHash | None
    payload: torch.Tensor  # 1-D uint8 on CPU, KVLayout.payload_bytes long


def layout_of(kv_caches: list[KVCache]) -> KVLayout:
    key = kv_caches[0][0]
    return KVLayout(DTYPE_NAMES[key.dtype], len(kv_caches), key.shape[2], key.shape[3], key.shape[1])


def export_blocks(kv_caches: list[KVCache], block_ids: list[int]) -> list[torch.Tensor]:
    """One 1-D uint8 CPU payload per block id."""
    index = torch.tensor(block_ids, dtype=torch.int64, device=kv_caches[0][0].device)
    # [n, layers, 2, block_size, kv_heads, head_dim]
    stacked = torch.stack([torch.stack((k[index], v[index]), dim=1) for k, v in kv_caches], dim=1)
    flat = stacked.cpu().contiguous().view(torch.uint8).reshape(len(block_ids), -1)
    return list(flat.unbind(0))


def import_blocks(kv_caches: list[KVCache], block_ids: list[int], payloads: list[torch.Tensor]) -> None:
    """Write payloads (1-D uint8, as exported) into the given cache blocks."""
    layout = layout_of(kv_caches)
    device = kv_caches[0][0].device
    data = torch.stack([p.reshape(-1) for p in payloads]).contiguous()
    if data.shape[1] != layout.payload_bytes:
        raise ValueError(f"payload has {data.shape[1]} bytes, the layout needs {layout.payload_bytes}")
    blocks = data.view(layout.torch_dtype).reshape(len(payloads), *layout.payload_shape).to(device)
    index = torch.tensor(block_ids, dtype=torch.int64, device=device)
    for layer, (key_cache, value_cache) in enumerate(kv_caches):
        key_cache[index] = blocks[:, layer, 0]
        value_cache[index] = blocks[:, layer, 1]
