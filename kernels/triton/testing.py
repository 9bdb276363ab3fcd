"""Random paged-attention batches and a float64 oracle for checking the attention kernels.

Shared by ``tests/test_triton_kernels.py`` (tiny shapes, interpreter) and
``bench/kernel_check_gpu.py`` (real shapes, GPU). The cache starts as NaN
everywhere, so a kernel that reads one slot it should not (padding, a block's
unused tail, another sequence's block) turns its output NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.attention_metadata import AttentionMetadata
from services.engine.batch_inputs import build_batch_inputs
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledChunk


@dataclass
class AttentionCase:
    query: torch.Tensor  # [T, Hq, D]
    new_keys: torch.Tensor  # [T, Hkv, D]: this step's K, not yet in the cache
    new_values: torch.Tensor  # [T, Hkv, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D], cached prefixes written
    value_cache: torch.Tensor
    meta: AttentionMetadata
    keys: list[torch.Tensor]  # per sequence, all its K [context + new, Hkv, D]
    values: list[torch.Tensor]
    shapes: list[tuple[int, int]]  # per sequence (tokens cached before, new tokens)


def make_attention_case(
    shapes: list[tuple[int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    num_blocks: int | None = None,
    first_block: int = 0,
    seed: int = 0,
) -> AttentionCase:
    """A step of sequences ``(context_len, new_tokens)`` with scattered blocks from ``first_block`` on."""
    gen = torch.Generator().manual_seed(seed)
    needed = sum(-(-(ctx + new) // block_size) for ctx, new in shapes)
    num_blocks = num_blocks or first_block + 2 * needed
    order = first_block + torch.randperm(num_blocks - first_block, generator=gen)[:needed]
    free = order.tolist()
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype,
                           device=device)
    value_cache = torch.full_like(key_cache, float("nan"))
    flat_k = key_cache.view(-1, num_kv_heads, head_dim)
    flat_v = value_cache.view(-1, num_kv_heads, head_dim)
    chunks, keys, values = [], [], []
    for i, (ctx, new) in enumerate(shapes):
        total = ctx + new
        blocks = [free.pop() for _ in range(-(-total // block_size))]
        chunks.append(ScheduledChunk(Request(str(i), list(range(total)), SamplingParams()), ctx, new, blocks))
        k = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
        v = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
        keys.append(k)
        values.append(v)
        pos = torch.arange(ctx)
        slots = (torch.tensor(blocks, dtype=torch.int64)[pos // block_size] * block_size + pos % block_size)
        flat_k.index_copy_(0, slots.to(device), k[:ctx])
        flat_v.index_copy_(0, slots.to(device), v[:ctx])
    meta = build_batch_inputs(chunks, block_size, device).meta
    num_tokens = sum(new for _, new in shapes)
    query = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    return AttentionCase(
        query=query,
        new_keys=torch.cat([k[ctx:] for k, (ctx, _) in zip(keys, shapes)]),
        new_values=torch.cat([v[ctx:] for v, (ctx, _) in zip(values, shapes)]),
        key_cache=key_cache,
        value_cache=value_cache,
        meta=meta,
        keys=keys,
        values=values,
        shapes=shapes,
    )


def attention_oracle(case: AttentionCase, scale: float) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its keys, in float64: [T, Hq, D]."""
    group = case.query.shape[1] // case.keys[0].shape[1]
    outs, start = [], 0
    for k, v, (ctx, new) in zip(case.keys, case.values, case.shapes):
        q = case.query[start : start + new].double()
        k = k.double().repeat_interleave(group, 1)
        v = v.double().repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(ctx, ctx + new, device=q.device)[:, None]
        visible = torch.arange(k.shape[0], device=q.device)[None, :] <= q_pos
        scores = scores.masked_fill(~visible, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
        start += new
    return torch.cat(outs)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` in float64; NaN anywhere in ``got`` gives NaN."""
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm())


# ||out - ref|| / ||ref|| bounds: fp32 products, and bf16/fp16 probabilities fed to the P @ V product.
ATTENTION_TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
