import torch
import torch.nn.functional as F


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
