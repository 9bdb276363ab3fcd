"""Which BLAS library a captured decode graph's GEMMs use, by the graph's row count.

torch sends each GEMM to cuBLAS or cuBLASLt by one process-wide preference,
read when the GEMM is launched, so a CUDA graph keeps the kernels of the
library that was preferred while it was captured. On an H200 at Llama-8B
widths, 1k context (bench/RESULTS.md, ``bench.decode_step --cublaslt-max-rows``),
cuBLASLt's kernels made decode steps 3.2-3.6% faster at 48-64 rows, 2.6% at
96, 0.4-1.1% at 128-192, and 0.4% slower at 256; prompt steps were 1.3%
slower with it. So it is preferred only while capturing the graphs above the
rows the skinny Triton kernel takes, up to ``CUBLASLT_MAX_ROWS``; eager steps
keep torch's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from kernels.triton import skinny_linear

CUBLASLT_MAX_ROWS = 192


def graph_blas_library(rows: int) -> str | None:
    """The library to prefer while capturing a ``rows``-row decode graph; None keeps torch's choice."""
    if skinny_linear.MAX_ROWS < rows <= CUBLASLT_MAX_ROWS:
        return "cublaslt"
    return None


@contextmanager
def preferred_blas(library: str | None) -> Iterator[None]:
    """Prefer ``library`` for GEMMs launched in the block (None: no change), then restore."""
    if library is None:
        yield
        return
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(previous)
