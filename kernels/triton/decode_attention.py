"""Paged decode attention: one new query token per sequence, split-K over long contexts.

Each program takes one (sequence, KV head, split): all ``GROUP`` query heads
that share the KV head are rows of one tile, so every K/V block is read once
per group, not once per query head. A long context is cut into ``num_splits``
partitions run by separate programs, so batch 1 still fills the GPU; a small
reduce kernel merges their partial (max, sum, output) triples. Each sequence
sizes its own partitions from its length on the device, so the grid depends
only on the split count: a CUDA graph captured for the longest allowed
sequence stays right, and stays split, for every shorter one. The grid
covers every sequence of the batch and programs of sequences with more than
one new token return at once: the prefill kernel owns those, and no
device-to-host sync is needed to find the decode rows.

Reference: :func:`kernels.reference.paged_attention` (its decode branch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.triton._attention_tile import attend_tile
from kernels.triton._common import check_cache_layout, dot_settings, sm_count

LOG2E = 1.4426950408889634


@triton.jit
def _partition_size(seq_len, num_splits, BLOCK_N: tl.constexpr):
    """Keys per split of one sequence: its length over the splits, in whole tiles."""
    return tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N


# The block-table width changes with every eager step (graphs fix it): specializing
# on it would compile new variants under live traffic.
@triton.jit(do_not_specialize=["stride_table"])
def _decode_attention_kernel(
    q_ptr,  # [T, Hq, HEAD_DIM]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, HEAD_DIM]
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, Hkv, HEAD_DIM]
    block_tables_ptr,  # [B, max_blocks] int32
    seq_lens_ptr,  # [B] int32
    query_start_loc_ptr,  # [B + 1] int32
    out_ptr,  # [T, Hq, HEAD_DIM], written when not SPLIT
    part_out_ptr,  # [B, Hq, num_splits, HEAD_DIM] fp32, each split's normalised output
    part_lse_ptr,  # [B, Hq, num_splits, 2] fp32: each split's (max, sum) in the log2 domain
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
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) - q_start != 1:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    partition_size = _partition_size(seq_len, num_splits, BLOCK_N)
    start = split * partition_size
    if start >= seq_len:
        return
    end = tl.minimum(start + partition_size, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + offs_h
    head_mask = offs_h < GROUP
    q_rows = q_start.to(tl.int64) * stride_qt + heads * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=head_mask[:, None], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    q_pos = tl.full([BLOCK_H], 0, tl.int32) + (end - 1)
    table = block_tables_ptr + seq.to(tl.int64) * stride_table
    head_offset = kv_head * stride_head
    # Whole tiles need no mask; only the partition's ragged tail does.
    full_end = start + (end - start) // BLOCK_N * BLOCK_N
    for n0 in range(start, full_end, BLOCK_N):
        m_i, l_i, acc = attend_tile(
            q, q_pos, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table, n0, seq_len, head_offset,
            stride_block, stride_token, scale_log2e,
            BLOCK_N, BLOCK_SIZE, HEAD_DIM, False, UPCAST, PRECISION,
        )
    if full_end < end:
        m_i, l_i, acc = attend_tile(
            q, q_pos, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table, full_end, seq_len, head_offset,
            stride_block, stride_token, scale_log2e,
            BLOCK_N, BLOCK_SIZE, HEAD_DIM, True, UPCAST, PRECISION,
        )
    out = acc / l_i[:, None]

    if SPLIT:
        part_rows = (seq * tl.num_programs(1) * GROUP + heads) * num_splits + split
        tl.store(part_out_ptr + part_rows[:, None] * HEAD_DIM + offs_d[None, :], out, mask=head_mask[:, None])
        tl.store(part_lse_ptr + part_rows * 2, m_i, mask=head_mask)
        tl.store(part_lse_ptr + part_rows * 2 + 1, l_i, mask=head_mask)
    else:
        o_rows = q_start.to(tl.int64) * stride_ot + heads * stride_oh
        tl.store(out_ptr + o_rows[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=head_mask[:, None])


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr,  # [B, Hq, num_splits, HEAD_DIM] fp32
    part_lse_ptr,  # [B, Hq, num_splits, 2] fp32
    seq_lens_ptr,  # [B] int32
    query_start_loc_ptr,  # [B + 1] int32
    out_ptr,  # [T, Hq, HEAD_DIM]
    num_splits,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) - q_start != 1:
        return
    # Splits past the sequence end wrote nothing: read only the live ones.
    seq_len = tl.load(seq_lens_ptr + seq)
    live = tl.cdiv(seq_len, _partition_size(seq_len, num_splits, BLOCK_N))
    offs_s = tl.arange(0, BLOCK_S)
    mask = offs_s < live
    rows = (seq * tl.num_programs(1) + head) * num_splits + offs_s
    m = tl.load(part_lse_ptr + rows * 2, mask=mask, other=float("-inf"))
    l = tl.load(part_lse_ptr + rows * 2 + 1, mask=mask, other=0.0)
    weight = tl.exp2(m - tl.max(m, 0)) * l  # each split's share of the full softmax sum
    offs_d = tl.arange(0, HEAD_DIM)
    part = tl.load(part_out_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=mask[:, None], other=0.0)
    out = tl.sum(part * weight[:, None], 0) / tl.sum(weight, 0)
    o_ptrs = out_ptr + q_start.to(tl.int64) * stride_ot + head * stride_oh + offs_d
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty))


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int
    # Programs per (sequence, KV head); a sequence of L keys uses
    # cdiv(L, partition_size_for(L)) of them.
    num_splits: int
    num_warps: int = 4
    num_stages: int = 3
    maxnreg: int | None = None  # register cap per thread (None: the compiler's choice)


# Rule constants, from `python -m bench.attention_bandwidth --sweep` on an H200
# (bench/RESULTS.md): splitting costs a partial write and a reduce launch and
# lost to one program per (sequence, KV head) whenever those were at least one
# per SM; below that, about two programs per SM of 64+ keys each was fastest.
PROGRAMS_PER_SM = 2
MIN_PARTITION = 64  # keys
MAX_SPLITS = 64


def decode_config(
    batch: int, num_kv_heads: int, max_seq_len: int, head_dim: int, device: torch.device
) -> DecodeConfig:
    """Launch settings by rule: ~16 KB of K per tile, three stages deep, split only to fill the GPU."""
    block_n = 64 if head_dim >= 128 else 128
    programs = batch * num_kv_heads
    sms = sm_count(device)
    keys = max(max_seq_len, 1)
    num_splits = 1
    if programs < sms:
        want = triton.cdiv(PROGRAMS_PER_SM * sms, programs)
        num_splits = max(1, min(want, triton.cdiv(keys, max(MIN_PARTITION, block_n)), MAX_SPLITS))
    # No split may start past the longest sequence's end.
    num_splits = triton.cdiv(keys, partition_size_for(keys, num_splits, block_n))
    return DecodeConfig(block_n=block_n, num_splits=num_splits)


def partition_size_for(seq_len: int, num_splits: int, block_n: int) -> int:
    """Host copy of the kernels' rule: keys per split of a ``seq_len``-key sequence."""
    return triton.cdiv(triton.cdiv(seq_len, num_splits), block_n) * block_n


def decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_seq_len: int,
    scale: float,
    out: torch.Tensor,
    config: DecodeConfig | None = None,
) -> None:
    """Write ``out`` rows of the sequences with exactly one new token; others are left alone.

    query/out: [T, Hq, D]; caches: [num_blocks, block_size, Hkv, D];
    block_tables [B, max_blocks] int32; seq_lens [B] int32 (keys after this
    step, the new one included); query_start_loc [B + 1] int32. ``max_seq_len``
    (a host int, any bound on ``seq_lens``) only picks the split count, so a
    graph-captured call may pass the longest length it will ever see.
    """
    check_cache_layout(key_cache, value_cache)
    if query.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("query and out must have a contiguous head_dim")
    _, block_size, num_kv_heads, head_dim = key_cache.shape
    num_heads = query.shape[1]
    batch = block_tables.shape[0]
    if config is None:
        config = decode_config(batch, num_kv_heads, max_seq_len, head_dim, query.device)
    group = num_heads // num_kv_heads
    upcast, precision = dot_settings(query.dtype, query.device)
    split = config.num_splits > 1
    if split:
        part_out = torch.empty(batch, num_heads, config.num_splits, head_dim, dtype=torch.float32,
                               device=query.device)
        part_lse = torch.empty(batch, num_heads, config.num_splits, 2, dtype=torch.float32, device=query.device)
    else:
        part_out = part_lse = out  # unused: the SPLIT=False kernel never touches them
    _decode_attention_kernel[(batch, num_kv_heads, config.num_splits)](
        query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, out, part_out, part_lse,
        scale * LOG2E,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=config.block_n, SPLIT=split, UPCAST=upcast, PRECISION=precision,
        num_warps=config.num_warps, num_stages=config.num_stages,
        **({"maxnreg": config.maxnreg} if config.maxnreg else {}),
    )
    if split:
        _decode_reduce_kernel[(batch, num_heads)](
            part_out, part_lse, seq_lens, query_start_loc, out, config.num_splits,
            out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_S=triton.next_power_of_2(config.num_splits), BLOCK_N=config.block_n,
            num_warps=4,
        )
