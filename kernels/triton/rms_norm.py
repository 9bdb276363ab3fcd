"""Fused residual add + RMSNorm, one program per row.

Matches :func:`kernels.reference.rms_norm` step for step: the residual sum is
rounded to the input dtype (it is also the new residual stream), the
normalisation runs in fp32 and is rounded back, and only then is the weight
multiplied in, so a bf16 model sees the same roundings as HF's Llama.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [R, ..., N]: rows addressed as (row // inner, row % inner)
    residual_ptr,  # same shape as x, or x_ptr itself when HAS_RESIDUAL is False
    weight_ptr,  # [N]
    out_ptr,  # [R * inner, N] contiguous
    sum_ptr,  # [R * inner, N] contiguous: x + residual (unused without a residual)
    inner,  # rows per outer index (heads for a [T, H, D] input, else 1)
    stride_x0,
    stride_x1,
    stride_r0,
    stride_r1,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0)
    outer = (row // inner).to(tl.int64)
    in_row = row % inner
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + outer * stride_x0 + in_row * stride_x1 + cols, mask=mask, other=0.0)
    dtype = x.dtype
    x = x.to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + outer * stride_r0 + in_row * stride_r1 + cols, mask=mask, other=0.0)
        x = (x + r.to(tl.float32)).to(dtype).to(tl.float32)  # the sum in the input dtype
        tl.store(sum_ptr + row.to(tl.int64) * n_cols + cols, x.to(dtype), mask=mask)
    variance = tl.sum(x * x, 0) / n_cols
    normed = (x * (1.0 / tl.sqrt_rn(variance + eps))).to(dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row.to(tl.int64) * n_cols + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def _row_strides(t: torch.Tensor) -> tuple[int, int]:
    return (t.stride(0), t.stride(1)) if t.dim() == 3 else (t.stride(0), 0)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of ``x + residual`` over the last dim; returns ``(normed, x + residual)``.

    x: [R, N] or [R, H, N] (e.g. per-head q/k norm on a strided view); the
    last dim must be contiguous. Outputs are new contiguous tensors.
    """
    if x.dim() not in (2, 3) or x.stride(-1) != 1:
        x = x.reshape(-1, x.shape[-1]).contiguous()
    if residual is not None and (residual.shape != x.shape or residual.stride(-1) != 1):
        residual = residual.reshape(x.shape).contiguous()
    n_cols = x.shape[-1]
    inner = x.shape[1] if x.dim() == 3 else 1
    num_rows = x.numel() // n_cols
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    summed = torch.empty_like(out, dtype=x.dtype) if residual is not None else x
    if num_rows == 0:
        return out, summed
    sx0, sx1 = _row_strides(x)
    sr0, sr1 = _row_strides(residual) if residual is not None else (0, 0)
    block = triton.next_power_of_2(n_cols)
    _rms_norm_kernel[(num_rows,)](
        x, residual if residual is not None else x, weight, out, summed,
        inner, sx0, sx1, sr0, sr1, n_cols, eps,
        BLOCK=block, HAS_RESIDUAL=residual is not None,
        num_warps=min(16, max(1, block // 256)),
    )
    return out, summed
