"""The online-softmax step both attention kernels run over one tile of paged keys.

A tile is ``BLOCK_N`` consecutive key positions of one sequence and one KV
head. Positions map to cache rows through the block table, so a tile may span
several cache blocks (block size 16) or sit inside one (block size 128); the
kernels need no special case for either. Positions past the sequence end are
clamped to its last key: the load stays in real, initialised cache memory and
needs no mask (uninitialised blocks may hold NaNs that survive a zero weight),
and the causal/length mask then drops those scores.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton._common import mm


@triton.jit
def attend_tile(
    q,  # [BLOCK_M, HEAD_DIM] query rows of one KV head group, in the input dtype
    q_pos,  # [BLOCK_M] int32: the last key position each row may see (causal bound)
    m_i,  # [BLOCK_M] fp32 running max of the scaled (log2-domain) scores
    l_i,  # [BLOCK_M] fp32 running softmax denominator
    acc,  # [BLOCK_M, HEAD_DIM] fp32 running numerator
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, HEAD_DIM]
    v_cache_ptr,  # same shape and strides as k_cache_ptr
    block_table_ptr,  # [max_blocks] int32: this sequence's row of block_tables
    start,  # first key position of the tile
    seq_len,
    head_offset,  # kv_head * stride_h
    stride_block,
    stride_token,
    scale_log2e,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pos = start + tl.arange(0, BLOCK_N)
    pos_c = tl.minimum(pos, seq_len - 1)
    # int64: block * stride_block exceeds 2^31 in a large cache.
    block = tl.load(block_table_ptr + pos_c // BLOCK_SIZE).to(tl.int64)
    rows = block * stride_block + (pos_c % BLOCK_SIZE) * stride_token + head_offset
    offs = rows[:, None] + tl.arange(0, HEAD_DIM)[None, :]
    k = tl.load(k_cache_ptr + offs)
    v = tl.load(v_cache_ptr + offs)

    s = mm(q, tl.trans(k), UPCAST, PRECISION) * scale_log2e  # [BLOCK_M, BLOCK_N]
    if MASKED:
        s = tl.where(pos[None, :] <= q_pos[:, None], s, float("-inf"))
    # Every row has seen at least one unmasked key before (or in) this tile,
    # so m_new is finite and no exp2(-inf - -inf) NaN appears.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + mm(p.to(v.dtype), v, UPCAST, PRECISION)
    return m_new, l_i, acc
