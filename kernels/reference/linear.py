import torch
import torch.nn.functional as F

from kernels.reference.activation import silu_and_mul


def prepare_linear_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The reference backend multiplies by the plain weight: nothing to prepare."""
    return None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prepared: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias``; ``prepared`` is a backend's repacked weight, unused here."""
    return F.linear(x, weight, bias)


def linear_silu_and_mul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prepared: torch.Tensor | None = None,
) -> torch.Tensor:
    """The gated MLP's first half: ``silu(gate) * up`` of ``x @ [gate | up].T + bias``."""
    return silu_and_mul(linear(x, weight, bias, prepared))
