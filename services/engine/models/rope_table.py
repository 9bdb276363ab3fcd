"""Precomputed RoPE cos/sin tables, with HF's own frequency rules."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from services.engine.errors import UnsupportedArchitectureError

# "dynamic" rescales frequencies with the running sequence length, which a
# shared precomputed table cannot express.
_UNSUPPORTED_ROPE = {"dynamic", "longrope"}


def _default_inv_freq(config: PretrainedConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    base = config.rope_parameters["rope_theta"]
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (base**exponents), 1.0


def build_rope_table(
    config: PretrainedConfig, head_dim: int, max_positions: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape [max_positions, head_dim] in float32.

    Frequencies come from transformers' rope functions (default, linear,
    llama3, yarn), so positions map to exactly the angles HF computes.
    """
    params = getattr(config, "rope_parameters", None) or {"rope_type": "default"}
    rope_type = params.get("rope_type", "default")
    if rope_type in _UNSUPPORTED_ROPE:
        raise UnsupportedArchitectureError(f"rope_type {rope_type!r} is not supported")
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedArchitectureError("partial rotary embeddings are not supported")
    if rope_type == "default":
        inv_freq, scaling = _default_inv_freq(config, head_dim)
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    positions = torch.arange(max_positions, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.float()[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * scaling).to(device), (angles.sin() * scaling).to(device)
