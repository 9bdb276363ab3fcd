"""Linear layers on CPU through oneDNN with weights repacked once at load time.

A plain ``F.linear`` repacks the weight into the GEMM's blocked layout on
every call. With decode batches of a few dozen rows that repacking costs about
as much as the multiply itself (SmolLM2's MLP at 64 rows: 3.1 ms plain, 1.8 ms
prepacked, on 2 AVX2 cores). For large row counts (prefill chunks) the
repacking is amortised and plain MKL is as fast or faster, so those rows take
the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.reference.activation import silu_and_mul

# Row count the packed layout is tuned for, and the largest that uses it.
_PACK_FOR_ROWS = 64
_MAX_PACKED_ROWS = 256


def _onednn_usable() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.randn(8, 16)
        x = torch.randn(3, 16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_size=_PACK_FOR_ROWS)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(got, F.linear(x, weight), atol=1e-4))
    except (RuntimeError, AttributeError):
        # The op is private to torch; if a build lacks it, run the plain path.
        return False


_ONEDNN = _onednn_usable()


def prepare_linear_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """A oneDNN-packed copy of a float32 CPU weight, or None when packing does not apply."""
    if not _ONEDNN or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_size=_PACK_FOR_ROWS)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prepared: torch.Tensor | None = None,
) -> torch.Tensor:
    if prepared is not None and x.shape[0] <= _MAX_PACKED_ROWS:
        return torch.ops.mkldnn._linear_pointwise(x, prepared, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_silu_and_mul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prepared: torch.Tensor | None = None,
) -> torch.Tensor:
    """``silu(gate) * up`` of ``x @ [gate | up].T + bias``, through the packed linear."""
    return silu_and_mul(linear(x, weight, bias, prepared))
