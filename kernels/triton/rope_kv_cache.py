"""RoPE on q and k plus the paged KV-cache write of the rotated k and of v, in one launch.

What :func:`kernels.triton.rope.apply_rope` followed by
:func:`kernels.triton.kv_cache.write_kv_cache` do, without the round trip of
the rotated k through memory and with one launch per layer instead of two.
One program per token: it reads the token's cos/sin rows once, writes its
rotated query heads to a new tensor, and stores its rotated key heads and its
value heads at the token's ``slot_mapping`` slot. The rotation is the same
jitted code as the RoPE kernel's, so the results are bit-identical to the two
separate launches. Attention reads K only from the cache (both the decode and
the prefill kernel), so the rotated k is not returned.

Reference: :func:`kernels.reference.apply_rope_and_write_kv_cache`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.rope import rope_cos_sin, rotate_half_rows


@triton.jit
def _rope_kv_cache_kernel(
    q_ptr,  # [T, Hq, 2 * HALF]
    k_ptr,  # [T, Hkv, 2 * HALF]
    v_ptr,  # [T, Hkv, 2 * HALF]
    q_out_ptr,  # [T, Hq, 2 * HALF] contiguous
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, 2 * HALF]
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, 2 * HALF], same strides as k_cache_ptr
    positions_ptr,  # [T] int64
    slot_mapping_ptr,  # [T] int64: block_id * BLOCK_SIZE + offset; negative: rotate q, write no K/V
    cos_ptr,  # [max_positions, 2 * HALF] fp32
    sin_ptr,  # [max_positions, 2 * HALF] fp32
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cos,
    stride_block,
    stride_token,
    stride_head,
    num_q_heads,
    num_kv_heads,
    BLOCK_SIZE: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token)
    cos_lo, cos_hi, sin_lo, sin_hi = rope_cos_sin(cos_ptr, sin_ptr, pos * stride_cos, q_ptr.dtype.element_ty, HALF)
    cols = tl.arange(0, HALF)[None, :]

    q_heads = tl.arange(0, BLOCK_HQ)[:, None]
    q_mask = q_heads < num_q_heads
    q_src = q_ptr + token * stride_qt + q_heads * stride_qh + cols
    q_lo = tl.load(q_src, mask=q_mask, other=0.0)
    q_hi = tl.load(q_src + HALF, mask=q_mask, other=0.0)
    q_lo, q_hi = rotate_half_rows(q_lo, q_hi, cos_lo, cos_hi, sin_lo, sin_hi)
    q_dst = q_out_ptr + (token * num_q_heads + q_heads) * (2 * HALF) + cols
    tl.store(q_dst, q_lo, mask=q_mask)
    tl.store(q_dst + HALF, q_hi, mask=q_mask)

    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_HK)[:, None]
    mask = heads < num_kv_heads  # per row only, so each row moves as whole vectors
    # int64 throughout: slot // BLOCK_SIZE * stride_block passes 2^31 in a large cache.
    dst = (slot // BLOCK_SIZE) * stride_block + (slot % BLOCK_SIZE) * stride_token + heads * stride_head + cols
    k_src = k_ptr + token * stride_kt + heads * stride_kh + cols
    k_lo = tl.load(k_src, mask=mask, other=0.0)
    k_hi = tl.load(k_src + HALF, mask=mask, other=0.0)
    k_lo, k_hi = rotate_half_rows(k_lo, k_hi, cos_lo, cos_hi, sin_lo, sin_hi)
    tl.store(k_cache_ptr + dst, k_lo, mask=mask)
    tl.store(k_cache_ptr + dst + HALF, k_hi, mask=mask)
    v_src = v_ptr + token * stride_vt + heads * stride_vh + cols
    tl.store(v_cache_ptr + dst, tl.load(v_src, mask=mask), mask=mask)
    tl.store(v_cache_ptr + dst + HALF, tl.load(v_src + HALF, mask=mask), mask=mask)


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
    """q: [T, Hq, D], k/v: [T, Hkv, D] (strided views are fine), positions: [T] int64,
    cos_cache/sin_cache: [max_positions, D] fp32, caches: [num_blocks, block_size, Hkv, D],
    slot_mapping: [T] int64. Returns the rotated q, a new contiguous tensor."""
    if key_cache.stride() != value_cache.stride() or key_cache.stride(-1) != 1:
        raise ValueError("key_cache and value_cache must share strides with a contiguous head_dim")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    cos_cache, sin_cache = cos_cache.contiguous(), sin_cache.contiguous()
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    half = head_dim // 2
    if half & (half - 1):
        raise ValueError(f"head_dim must be a power of two for the Triton RoPE kernel, got {head_dim}")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    _rope_kv_cache_kernel[(num_tokens,)](
        q, k, v, q_out, key_cache, value_cache, positions, slot_mapping, cos_cache, sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_cache.stride(0),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        num_q_heads, num_kv_heads,
        BLOCK_SIZE=key_cache.shape[1], HALF=half,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HK=triton.next_power_of_2(num_kv_heads),
        # No FMA contraction: the reference rounds each product before the add.
        num_warps=4, enable_fp_fusion=False,
    )
    return q_out
