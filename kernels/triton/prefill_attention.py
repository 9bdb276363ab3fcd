"""Paged prefill attention: causal, variable length, over a cached prefix plus the new chunk.

The new tokens' K/V are already in the cache (the model writes them first), so
keys of both the prefix and the chunk are read through the block table alike.
A program takes ``BLOCK_Q`` consecutive query tokens of one sequence times all
``GROUP`` query heads of one KV head (``BLOCK_M = BLOCK_Q * GROUP_PAD`` rows),
so K/V tiles are shared by the whole head group, and runs a flash-attention
online softmax over key tiles: unmasked up to the chunk's first query
position, causally masked on the diagonal tiles after it.

Only sequences with more than one new token get tiles; a program finds its
(sequence, tile) from ``query_start_loc`` with a prefix sum, so the launch
needs nothing but the tile count, which the host knows without a sync.

Reference: :func:`kernels.reference.paged_attention` (its per-prompt branch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.triton._attention_tile import attend_tile
from kernels.triton._common import check_cache_layout, dot_settings

LOG2E = 1.4426950408889634


# The sequence count and the block-table width change every step: specializing on
# them (== 1, multiple of 16) would compile new variants under live traffic.
@triton.jit(do_not_specialize=["num_seqs", "stride_table"])
def _prefill_attention_kernel(
    q_ptr,  # [T, Hq, HEAD_DIM]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, HEAD_DIM]
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, HEAD_DIM]
    block_tables_ptr,  # [B, max_blocks] int32
    seq_lens_ptr,  # [B] int32: keys after this step
    query_start_loc_ptr,  # [B + 1] int32
    out_ptr,  # [T, Hq, HEAD_DIM]
    num_seqs,
    scale_log2e,
    stride_qt,
    stride_qh,
    stride_block,
    stride_token,
    stride_head,
    stride_table,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)

    # Which sequence owns this tile: prefix-sum the tiles of every multi-token sequence.
    offs_b = tl.arange(0, BLOCK_B)
    in_batch = offs_b < num_seqs
    starts = tl.load(query_start_loc_ptr + offs_b, mask=in_batch, other=0)
    lens = tl.load(query_start_loc_ptr + offs_b + 1, mask=in_batch, other=0) - starts
    tiles = tl.where(lens > 1, (lens + BLOCK_Q - 1) // BLOCK_Q, 0)
    seq = tl.sum((tl.cumsum(tiles, 0) <= tile).to(tl.int32), 0)
    if seq >= num_seqs:
        return
    q_tile = tile - tl.sum(tl.where(offs_b < seq, tiles, 0), 0)
    q_start = tl.sum(tl.where(offs_b == seq, starts, 0), 0)
    q_len = tl.sum(tl.where(offs_b == seq, lens, 0), 0)
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    rows = tl.arange(0, BLOCK_M)
    token = q_tile * BLOCK_Q + rows // GROUP_PAD
    head = kv_head * GROUP + rows % GROUP_PAD
    row_mask = (token < q_len) & (rows % GROUP_PAD < GROUP)
    offs_d = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + token).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_mask[:, None], other=0.0)
    q_pos = context_len + token  # padding rows sit past the end and see every key: no NaN

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_table
    head_offset = kv_head * stride_head
    first_pos = context_len + q_tile * BLOCK_Q
    # Keys below the tile's first query position are visible to all its rows.
    full_end = first_pos // BLOCK_N * BLOCK_N
    for n0 in range(0, full_end, BLOCK_N):
        m_i, l_i, acc = attend_tile(
            q, q_pos, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table, n0, seq_len, head_offset,
            stride_block, stride_token, scale_log2e,
            BLOCK_N, BLOCK_SIZE, HEAD_DIM, False, UPCAST, PRECISION,
        )
    end = tl.minimum(seq_len, first_pos + BLOCK_Q)
    for n0 in range(full_end, end, BLOCK_N):
        m_i, l_i, acc = attend_tile(
            q, q_pos, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table, n0, seq_len, head_offset,
            stride_block, stride_token, scale_log2e,
            BLOCK_N, BLOCK_SIZE, HEAD_DIM, True, UPCAST, PRECISION,
        )
    out = acc / l_i[:, None]
    o_rows = (q_start + token).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(out_ptr + o_rows[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None])


@dataclass(frozen=True)
class PrefillConfig:
    block_q: int  # query tokens per program
    group_pad: int  # query heads per KV head, padded to a power of two
    block_n: int
    num_warps: int
    num_stages: int


def prefill_config(num_heads: int, num_kv_heads: int, head_dim: int) -> PrefillConfig:
    """By rule: 64-128 query rows (tokens x heads of a group) against 64-key tiles."""
    group_pad = triton.next_power_of_2(num_heads // num_kv_heads)
    block_m = max(128 if head_dim <= 64 else 64, group_pad)
    return PrefillConfig(block_q=block_m // group_pad, group_pad=group_pad, block_n=64, num_warps=4,
                         num_stages=2)


def prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    prefill_lens: list[int],
    scale: float,
    out: torch.Tensor,
) -> None:
    """Write ``out`` rows of the sequences with more than one new token.

    ``prefill_lens``: the new-token count of each such sequence (host ints,
    e.g. from ``meta.prefills``); it only sizes the grid.
    """
    check_cache_layout(key_cache, value_cache)
    if query.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("query and out must have a contiguous head_dim")
    _, block_size, num_kv_heads, head_dim = key_cache.shape
    num_heads = query.shape[1]
    config = prefill_config(num_heads, num_kv_heads, head_dim)
    num_tiles = sum(triton.cdiv(n, config.block_q) for n in prefill_lens if n > 1)
    if num_tiles == 0:
        return
    num_seqs = block_tables.shape[0]
    upcast, precision = dot_settings(query.dtype, query.device)
    _prefill_attention_kernel[(num_tiles, num_kv_heads)](
        query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, out,
        num_seqs, scale * LOG2E,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, GROUP_PAD=config.group_pad, BLOCK_Q=config.block_q,
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_N=config.block_n,
        BLOCK_B=max(16, triton.next_power_of_2(num_seqs)), UPCAST=upcast, PRECISION=precision,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
