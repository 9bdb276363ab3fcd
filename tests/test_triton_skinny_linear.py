"""The skinny (few-row) linear kernel against the torch reference, on CPU under ``TRITON_INTERPRET=1``.

The kernel sums K in a different order than a BLAS, so results agree to
rounding of the fp32 accumulator's output, not bit for bit; the gated variant
is checked against ``silu_and_mul(linear(...))``, the two ops it replaces.
bench/kernel_check_gpu.py runs the compiled kernel at Llama-8B shapes.
"""

from __future__ import annotations

import pytest
import torch

from tests.triton_interpret import randn, run_module_in_fresh_process, skip_unless_runs_here

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from kernels import reference as ref
from kernels import triton as tk
from kernels.triton import skinny_linear as sk

# One output rounding (bf16: 2^-8 relative) plus fp32 accumulation-order noise.
TOL = {torch.bfloat16: (1.6e-2, 1e-2), torch.float16: (2e-3, 1e-3)}


@pytest.fixture(autouse=True)
def _interpreted_or_on_gpu(request: pytest.FixtureRequest) -> None:
    skip_unless_runs_here(request)


def test_interpreted_suite_in_a_fresh_process():
    run_module_in_fresh_process(__file__)


def _operands(rows: int, features: int, depth: int, dtype: torch.dtype, bias: bool):
    # Scaled so outputs are O(1) and rounding, not magnitude, sets the tolerance.
    x = randn(rows, depth, dtype=dtype)
    weight = (randn(features, depth) / depth**0.5).to(dtype)
    return x, weight, (randn(features, dtype=dtype) if bias else None)


@pytest.mark.parametrize(
    ("rows", "features", "depth", "dtype", "bias"),
    [
        (1, 96, 256, torch.bfloat16, False),
        (3, 80, 512, torch.float16, True),  # N not a multiple of the 16-row tile
        (sk.MAX_ROWS, 64, 320, torch.bfloat16, False),  # K not a multiple of the K tile; the most rows routed here
        (5, 48, 100, torch.float16, False),  # K under one tile
    ],
)
def test_skinny_linear_matches_reference(rows, features, depth, dtype, bias):
    torch.manual_seed(rows * 1000 + features)
    x, weight, b = _operands(rows, features, depth, dtype, bias)
    assert sk.uses_skinny_linear(x, weight)
    got = tk.linear(x, weight, b)
    want = ref.linear(x.float(), weight.float(), None if b is None else b.float()).to(dtype)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize(("rows", "inter", "dtype", "bias"), [(1, 64, torch.bfloat16, False),
                                                              (7, 40, torch.float16, True)])
def test_gated_skinny_linear_matches_silu_and_mul_of_linear(rows, inter, dtype, bias):
    torch.manual_seed(inter + rows)
    x, weight, b = _operands(rows, 2 * inter, 256, dtype, bias)
    got = tk.linear_silu_and_mul(x, weight, b)
    assert got.shape == (rows, inter)
    want = ref.linear_silu_and_mul(x.float(), weight.float(), None if b is None else b.float()).to(dtype)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_leading_dimensions_and_strided_rows_are_kept():
    """[B, S, K] inputs keep their leading shape; a row-strided view is read in place."""
    torch.manual_seed(3)
    base = randn(2, 3, 160, dtype=torch.bfloat16)
    x = base[..., :128]
    _, weight, _ = _operands(1, 32, 128, torch.bfloat16, False)
    got = tk.linear(x, weight, None)
    assert got.shape == (2, 3, 32)
    want = ref.linear(x.float(), weight.float(), None).to(torch.bfloat16)
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)


def test_rows_past_the_limit_float32_and_empty_inputs_use_the_blas_path():
    weight = randn(32, 64, dtype=torch.bfloat16)
    assert not sk.uses_skinny_linear(randn(sk.MAX_ROWS + 1, 64, dtype=torch.bfloat16), weight)
    assert not sk.uses_skinny_linear(randn(2, 64), randn(32, 64))  # float32 stays exact on cuBLAS
    assert not sk.uses_skinny_linear(randn(0, 64, dtype=torch.bfloat16), weight)
    assert tk.linear(randn(0, 64, dtype=torch.bfloat16), weight, None).shape == (0, 32)
