"""The Triton backend (selected on CUDA by :mod:`kernels.dispatch`).

Same functions and signatures as :mod:`kernels.reference`. Importing this
package imports :mod:`triton`; nothing else in tandem imports it directly.
Every kernel also runs on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from kernels.triton.activation import silu_and_mul
from kernels.triton.kv_cache import write_kv_cache
# Linear layers stay on cuBLAS (the reference op): at serving shapes it is at the matrix-unit roofline.
from kernels.reference.linear import linear, prepare_linear_weight
from kernels.triton.paged_attention import paged_attention
from kernels.triton.rms_norm import rms_norm
from kernels.triton.rope import apply_rope

__all__ = [
    "apply_rope",
    "linear",
    "paged_attention",
    "prepare_linear_weight",
    "rms_norm",
    "silu_and_mul",
    "write_kv_cache",
]
