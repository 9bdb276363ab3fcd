"""SiLU-and-mul: ``silu(gate) * up`` for ``x = [gate | up]``, the gated MLP's activation.

Rounded like :func:`kernels.reference.silu_and_mul` (``F.silu(gate) * up`` in
the input dtype): SiLU in fp32, rounded, then the product rounded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [T, 2 * I]
    out_ptr,  # [T, I] contiguous
    inter,  # I
    stride_xt,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_xt + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_xt + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, (silu * up.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2 * I] -> [T, I]."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    x2 = x.reshape(-1, x.shape[-1])
    inter = x2.shape[1] // 2
    out = torch.empty(*x.shape[:-1], inter, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return out
    block = min(1024, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(inter, block))](
        x2, out, inter, x2.stride(0), BLOCK=block, num_warps=4
    )
    return out
