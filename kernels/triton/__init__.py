"""The Triton backend (selected on CUDA by :mod:`kernels.dispatch`).

Same functions and signatures as :mod:`kernels.reference`. Importing this
package imports :mod:`triton`; nothing else in tandem imports it directly.
Every kernel also runs on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from kernels.triton.activation import silu_and_mul
from kernels.triton.kv_cache import write_kv_cache
from kernels.triton.linear import linear, linear_silu_and_mul, prepare_linear_weight
from kernels.triton.paged_attention import paged_attention
from kernels.triton.rms_norm import rms_norm
from kernels.triton.rope import apply_rope
from kernels.triton.rope_kv_cache import apply_rope_and_write_kv_cache

# Facts the engine reads off the module (absent means False):
# attention reads ``block_tables`` itself, so the per-token slot views of
# AttentionMetadata need not be built;
READS_BLOCK_TABLES = True
# and no kernel syncs with the host or sizes a grid from device data, so a
# decode step may be captured in a CUDA graph (services/engine/cuda_graphs.py).
CUDA_GRAPH_SAFE = True

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
