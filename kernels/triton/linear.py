"""Linear layers on CUDA: the skinny Triton kernel for decode-sized row counts, cuBLAS otherwise.

At prompt-step row counts cuBLAS's tiles cover the chip and it runs at the
matrix-unit roofline; below ``skinny_linear.MAX_ROWS`` rows its grid leaves
multiprocessors idle while the weights stream (bench/skinny_linear.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Both paths read the checkpoint's [N, K] weight as it is: nothing to prepare.
from kernels.reference.linear import prepare_linear_weight
from kernels.triton.activation import silu_and_mul
from kernels.triton.skinny_linear import skinny_linear, uses_skinny_linear

__all__ = ["linear", "linear_silu_and_mul", "prepare_linear_weight"]


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prepared: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias``."""
    if uses_skinny_linear(x, weight):
        return skinny_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_silu_and_mul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prepared: torch.Tensor | None = None,
) -> torch.Tensor:
    """``silu(gate) * up`` of ``x @ [gate | up].T + bias``: one launch for few rows."""
    if uses_skinny_linear(x, weight):
        return skinny_linear(x, weight, bias, gated=True)
    return silu_and_mul(F.linear(x, weight, bias))
