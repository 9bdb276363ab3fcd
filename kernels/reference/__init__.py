"""Plain-torch reference kernels: the CPU backend and the oracle for GPU kernels."""

from kernels.reference.activation import silu_and_mul
from kernels.reference.kv_cache import write_kv_cache
from kernels.reference.linear import linear, linear_silu_and_mul, prepare_linear_weight
from kernels.reference.paged_attention import paged_attention
from kernels.reference.rms_norm import rms_norm
from kernels.reference.rope import apply_rope
from kernels.reference.rope_kv_cache import apply_rope_and_write_kv_cache

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
