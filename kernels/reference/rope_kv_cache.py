import torch

from kernels.reference.kv_cache import write_kv_cache
from kernels.reference.rope import apply_rope


def apply_rope_and_write_kv_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """:func:`apply_rope` on q and k, then :func:`write_kv_cache` of the rotated k and v.

    q: [T, Hq, D], k/v: [T, Hkv, D], positions: [T] int64, cos_cache/sin_cache:
    [max_positions, D] float32, key_cache/value_cache: [num_blocks, block_size, Hkv, D],
    slot_mapping: [T] int64. Returns the rotated q; the rotated k lives only in
    the cache, which is where attention reads it.
    """
    q, k = apply_rope(q, k, positions, cos_cache, sin_cache)
    write_kv_cache(k, v, key_cache, value_cache, slot_mapping)
    return q
