"""Rotary embedding (HF rotate-half layout) on q and k in one launch.

One program per token rotates all its query and key heads, so the token's
cos/sin rows are read once. Rounded like :func:`kernels.reference.apply_rope`:
cos/sin cast to the activation dtype, each product and the sum rounded to it.
The fused RoPE + KV-cache write (:mod:`kernels.triton.rope_kv_cache`) runs the
same two jitted helpers, so the two paths agree bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def rope_cos_sin(
    cos_ptr,  # [max_positions, 2 * HALF] fp32
    sin_ptr,  # [max_positions, 2 * HALF] fp32
    row,  # position * stride of the tables
    dtype: tl.constexpr,
    HALF: tl.constexpr,
):
    """One position's (cos_lo, cos_hi, sin_lo, sin_hi), each [1, HALF] fp32 holding values
    rounded to the activation ``dtype`` first, as HF casts the tables."""
    cols = tl.arange(0, HALF)
    cos_lo = tl.load(cos_ptr + row + cols).to(dtype).to(tl.float32)[None, :]
    cos_hi = tl.load(cos_ptr + row + HALF + cols).to(dtype).to(tl.float32)[None, :]
    sin_lo = tl.load(sin_ptr + row + cols).to(dtype).to(tl.float32)[None, :]
    sin_hi = tl.load(sin_ptr + row + HALF + cols).to(dtype).to(tl.float32)[None, :]
    return cos_lo, cos_hi, sin_lo, sin_hi


@triton.jit
def rotate_half_rows(lo, hi, cos_lo, cos_hi, sin_lo, sin_hi):
    """Both halves of ``x * cos + rotate_half(x) * sin`` for rows ``x = [lo | hi]``, in x's dtype.

    rotate_half(x) = [-hi, lo]; each product and the sum are rounded to the
    dtype, as the reference's separate torch ops do (launch with
    ``enable_fp_fusion=False`` so no FMA contracts them).
    """
    dtype = lo.dtype
    lo_f, hi_f = lo.to(tl.float32), hi.to(tl.float32)
    out_lo = (lo_f * cos_lo).to(dtype).to(tl.float32) + (-hi_f * sin_lo).to(dtype).to(tl.float32)
    out_hi = (hi_f * cos_hi).to(dtype).to(tl.float32) + (lo_f * sin_hi).to(dtype).to(tl.float32)
    return out_lo.to(dtype), out_hi.to(dtype)


@triton.jit
def _rotate_heads(
    x_ptr,  # [T, H, 2 * HALF] (this token's row is at x_ptr + token * stride_t)
    out_ptr,  # [T, H, 2 * HALF] contiguous
    token,
    stride_t,
    stride_h,
    num_heads,
    cos_lo,
    cos_hi,
    sin_lo,
    sin_hi,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, HALF)
    mask = (heads < num_heads)[:, None]
    src = x_ptr + token * stride_t + heads[:, None] * stride_h + cols[None, :]
    lo = tl.load(src, mask=mask, other=0.0)
    hi = tl.load(src + HALF, mask=mask, other=0.0)
    out_lo, out_hi = rotate_half_rows(lo, hi, cos_lo, cos_hi, sin_lo, sin_hi)
    dst = out_ptr + token * num_heads * 2 * HALF + heads[:, None] * 2 * HALF + cols[None, :]
    tl.store(dst, out_lo, mask=mask)
    tl.store(dst + HALF, out_hi, mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr,  # [T, Hq, D]
    k_ptr,  # [T, Hkv, D]
    q_out_ptr,  # [T, Hq, D] contiguous
    k_out_ptr,  # [T, Hkv, D] contiguous
    positions_ptr,  # [T] int64
    cos_ptr,  # [max_positions, D] fp32
    sin_ptr,  # [max_positions, D] fp32
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cos,
    num_q_heads,
    num_k_heads,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token)
    cos_lo, cos_hi, sin_lo, sin_hi = rope_cos_sin(cos_ptr, sin_ptr, pos * stride_cos, q_ptr.dtype.element_ty, HALF)
    _rotate_heads(q_ptr, q_out_ptr, token, stride_qt, stride_qh, num_q_heads,
                  cos_lo, cos_hi, sin_lo, sin_hi, HALF, BLOCK_HQ)
    _rotate_heads(k_ptr, k_out_ptr, token, stride_kt, stride_kh, num_k_heads,
                  cos_lo, cos_hi, sin_lo, sin_hi, HALF, BLOCK_HK)


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [T, Hq, D], k: [T, Hkv, D] (strided views are fine), positions: [T] int64,
    cos_cache/sin_cache: [max_positions, D] fp32. Returns new contiguous (q, k)."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    cos_cache, sin_cache = cos_cache.contiguous(), sin_cache.contiguous()
    num_tokens, num_q_heads, head_dim = q.shape
    half = head_dim // 2
    if half & (half - 1):
        raise ValueError(f"head_dim must be a power of two for the Triton RoPE kernel, got {head_dim}")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    _rope_kernel[(num_tokens,)](
        q, k, q_out, k_out, positions, cos_cache, sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_cache.stride(0),
        num_q_heads, k.shape[1],
        HALF=half, BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HK=triton.next_power_of_2(k.shape[1]),
        # No FMA contraction: the reference rounds each product before the add.
        num_warps=4, enable_fp_fusion=False,
    )
    return q_out, k_out
