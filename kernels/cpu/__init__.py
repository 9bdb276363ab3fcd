"""The CPU backend: the torch reference ops, with oneDNN prepacked weights for linear layers."""

from kernels.cpu.linear import linear, linear_silu_and_mul, prepare_linear_weight
from kernels.reference import (
    apply_rope,
    apply_rope_and_write_kv_cache,
    paged_attention,
    rms_norm,
    silu_and_mul,
    write_kv_cache,
)

__all__ = [
    "apply_rope",
    "apply_rope_and_write_kv_cache",
    "linear",
    "linear_silu_and_mul",
    "paged_attention",
    "prepare_linear_weight",
    "rms_norm",
    "silu_and_mul",
    "write_kv_cache",
]
