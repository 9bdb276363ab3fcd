"""Linear layers for a few rows (decode steps): ``x @ W.T (+ bias)``, optionally gated.

A decode step multiplies a handful of token rows by every weight matrix, so
the work is reading the weights once. cuBLAS sizes its grid by output tiles,
and at a few rows the narrow projections give it few of them: on an H200 at
M=1 it read the o projection in 13.5 us and q/k/v in 17.1 us, where this
kernel takes 10.7 and 14.7 (bench/results/2026-11-21_h200_skinny-linear.jsonl,
``python -m bench.skinny_linear``). Here each
program owns ``BLOCK_N`` weight rows (output features) and walks K; the grid
has ``N / BLOCK_N`` programs, enough to keep every multiprocessor's loads in
flight. The product is computed transposed (``W_tile @ x_tile.T``), so the
weight tile is the matrix unit's wide operand and the few token rows its
narrow one, padded to ``BLOCK_M`` >= 16.

``GATED`` fuses the gated MLP's activation: the weight is ``[gate | up]``
stacked on N, each program reads the matching gate and up rows and writes
``silu(gate) * up``, rounded as :func:`kernels.reference.silu_and_mul` rounds
the unfused result (each projection rounded to the output dtype first), so
the ``[M, 2I]`` intermediate never reaches memory and one launch disappears.

Only half precision goes here: a float32 ``tl.dot`` would run as tf32, and the
engine's float32 path must stay exact against HF transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Rows above this go to cuBLAS: its tiles then cover the chip (set from bench/skinny_linear.py).
MAX_ROWS = 32
_HALF_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def _skinny_linear_kernel(
    x_ptr,  # [M, K], unit stride along K
    w_ptr,  # [N, K] (GATED: [2 * N, K], gate rows then up rows), unit stride along K
    bias_ptr,  # [N] (GATED: [2 * N]); unused unless HAS_BIAS
    out_ptr,  # [M, N] contiguous
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    HAS_BIAS: tl.constexpr,
    GATED: tl.constexpr,
    EVEN_K: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tokens = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    feature_mask = features < N
    token_mask = tokens < M
    gate_rows = w_ptr + features.to(tl.int64)[:, None] * stride_wn
    up_rows = w_ptr + (features + N).to(tl.int64)[:, None] * stride_wn
    x_cols = x_ptr + tokens.to(tl.int64)[None, :] * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        if EVEN_K:
            x_t = tl.load(x_cols + k[:, None], mask=token_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_M]
            w = tl.load(gate_rows + k[None, :], mask=feature_mask[:, None], other=0.0)  # [BLOCK_N, BLOCK_K]
        else:
            k_mask = k < K
            x_t = tl.load(x_cols + k[:, None], mask=token_mask[None, :] & k_mask[:, None], other=0.0)
            w = tl.load(gate_rows + k[None, :], mask=feature_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST_DOT:
            acc = tl.dot(w.to(tl.float32), x_t.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, x_t, acc)
        if GATED:
            if EVEN_K:
                w_up = tl.load(up_rows + k[None, :], mask=feature_mask[:, None], other=0.0)
            else:
                w_up = tl.load(up_rows + k[None, :], mask=feature_mask[:, None] & k_mask[None, :], other=0.0)
            if UPCAST_DOT:
                acc_up = tl.dot(w_up.to(tl.float32), x_t.to(tl.float32), acc_up, input_precision="ieee")
            else:
                acc_up = tl.dot(w_up, x_t, acc_up)
    out_dtype = out_ptr.dtype.element_ty
    if HAS_BIAS:
        acc += tl.load(bias_ptr + features, mask=feature_mask, other=0.0).to(tl.float32)[:, None]
        if GATED:
            acc_up += tl.load(bias_ptr + N + features, mask=feature_mask, other=0.0).to(tl.float32)[:, None]
    if GATED:
        gate = acc.to(out_dtype).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(out_dtype).to(tl.float32)
        acc = silu * acc_up.to(out_dtype).to(tl.float32)
    out = out_ptr + tokens.to(tl.int64)[None, :] * N + features[:, None]
    tl.store(out, acc.to(out_dtype), mask=feature_mask[:, None] & token_mask[None, :])


@dataclass(frozen=True)
class SkinnyConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def skinny_config(features: int, gated: bool) -> SkinnyConfig:
    """Launch rule, from the tile sweep of bench/skinny_linear.py at Llama-8B widths on an H200.

    What matters is weight bytes in flight per multiprocessor: narrow
    projections (N <= 4096: o, down) take 32-row programs, so their grid still
    has one program per multiprocessor, with 256-wide K tiles five stages deep
    (80 KB); wider ones take 64 rows and 128-wide tiles, four or five deep;
    gated tiles are twice the bytes, so three stages. A grid of many waves (the
    LM head) needs fewer stages per program. Each pick ran within 2% of the
    sweep's best for its shape at 1-32 rows.
    """
    if gated:
        return SkinnyConfig(block_n=64, block_k=128, num_warps=4, num_stages=3)
    if features <= 4096:
        return SkinnyConfig(block_n=32, block_k=256, num_warps=4, num_stages=5)
    if features <= 16384:
        return SkinnyConfig(block_n=64, block_k=128, num_warps=4, num_stages=5)
    return SkinnyConfig(block_n=64, block_k=128, num_warps=4, num_stages=4)


def uses_skinny_linear(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Few enough rows, half precision, CUDA (or the interpreter's CPU tensors), K-contiguous operands."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return (
        0 < rows <= MAX_ROWS
        and x.dtype in _HALF_DTYPES
        and weight.dtype == x.dtype
        and weight.stride(-1) == 1
    )


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gated: bool = False,
    config: SkinnyConfig | None = None,
) -> torch.Tensor:
    """[..., K] @ [N, K].T -> [..., N]; gated: weight [2I, K] -> silu(gate) * up, [..., I].

    ``config`` overrides the launch rule (the benchmark's sweep).
    """
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows, depth = x2.shape
    features = weight.shape[0] // 2 if gated else weight.shape[0]
    out = torch.empty(*x.shape[:-1], features, dtype=x.dtype, device=x.device)
    config = config or skinny_config(features, gated)
    grid = (triton.cdiv(features, config.block_n),)
    _skinny_linear_kernel[grid](
        x2,
        weight,
        bias if bias is not None else weight,
        out,
        rows,
        features,
        depth,
        x2.stride(0),
        weight.stride(0),
        HAS_BIAS=bias is not None,
        GATED=gated,
        EVEN_K=depth % config.block_k == 0,
        # Triton's interpreter multiplies bfloat16 tiles as raw integers; on CPU (interpreted
        # tests) the tiles go to float32 first, which holds every half-precision product exactly.
        UPCAST_DOT=x.device.type == "cpu",
        BLOCK_M=max(16, triton.next_power_of_2(rows)),
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
