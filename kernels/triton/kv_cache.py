"""Reshape-and-cache: store each new token's K/V at its ``slot_mapping`` slot of the paged cache."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,  # [T, Hkv, D]
    value_ptr,  # [T, Hkv, D]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, D]
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, D], same strides as k_cache_ptr
    slot_mapping_ptr,  # [T] int64: block_id * BLOCK_SIZE + offset; negative means skip
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_block,
    stride_token,
    stride_head,
    num_heads,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_H)[:, None]
    cols = tl.arange(0, HEAD_DIM)[None, :]
    mask = heads < num_heads  # per row only, so each row moves as 16-byte vectors
    # int64 throughout: slot // BLOCK_SIZE * stride_block passes 2^31 in a large cache.
    dst = (slot // BLOCK_SIZE) * stride_block + (slot % BLOCK_SIZE) * stride_token + heads * stride_head + cols
    k = tl.load(key_ptr + token * stride_kt + heads * stride_kh + cols, mask=mask)
    v = tl.load(value_ptr + token * stride_vt + heads * stride_vh + cols, mask=mask)
    tl.store(k_cache_ptr + dst, k, mask=mask)
    tl.store(v_cache_ptr + dst, v, mask=mask)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """key/value: [T, Hkv, D]; caches: [num_blocks, block_size, Hkv, D]; slot_mapping: [T] int64."""
    if key_cache.stride() != value_cache.stride() or key_cache.stride(-1) != 1:
        raise ValueError("key_cache and value_cache must share strides with a contiguous head_dim")
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    num_tokens, num_heads, head_dim = key.shape
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two for the Triton KV-cache write, got {head_dim}")
    if num_tokens == 0:
        return
    _write_kv_cache_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        num_heads,
        BLOCK_SIZE=key_cache.shape[1], BLOCK_H=triton.next_power_of_2(num_heads), HEAD_DIM=head_dim,
        num_warps=4,
    )
