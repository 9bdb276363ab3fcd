"""Linear layers stay on cuBLAS: at serving shapes it is at the matrix-unit roofline already."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare_linear_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """cuBLAS takes the plain [out, in] weight: nothing to repack."""
    return None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prepared: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias``."""
    return F.linear(x, weight, bias)
