"""Launch facts the Triton kernels share: the device's size and how to run tl.dot.

Kernels import :mod:`triton` at module import, so this package must only be
imported through :func:`kernels.dispatch.select_backend` (or by tests that
want it): CPU-only installs never touch it otherwise.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# The interpreter (TRITON_INTERPRET=1, CPU tensors) is the only way these
# kernels run off a GPU; it has fewer "SMs" so split-K still triggers on tiny shapes.
_INTERPRETER_SMS = 4


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return _INTERPRETER_SMS


def dot_settings(dtype: torch.dtype, device: torch.device) -> tuple[bool, str]:
    """``(UPCAST, PRECISION)`` constexprs for :func:`mm`.

    The interpreter multiplies bfloat16 bit patterns in ``tl.dot`` (it stores
    bf16 as uint16), so on CPU the operands are widened to fp32 first. On the
    GPU fp32 inputs use IEEE products: tf32 would cost ~3e-4 relative error,
    and an fp32 model is a correctness run, not a speed one.
    """
    upcast = device.type == "cpu"
    return upcast, "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def mm(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` accumulated in fp32."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


def check_cache_layout(key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    """The kernels address K and V with one set of offsets and unit-stride head_dim rows."""
    if key_cache.stride() != value_cache.stride() or key_cache.shape != value_cache.shape:
        raise ValueError("key_cache and value_cache must have the same shape and strides")
    if key_cache.stride(-1) != 1:
        raise ValueError("the KV cache's head_dim must be contiguous")
    head_dim = key_cache.shape[-1]
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16 for the Triton kernels, got {head_dim}")
