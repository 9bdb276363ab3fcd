"""The fused RoPE + KV-cache write against the two ops it replaces, on CPU under ``TRITON_INTERPRET=1``.

Bit for bit against the Triton ``apply_rope`` then ``write_kv_cache``, whose
rotation code it shares; to within rounding against the torch reference (the
interpreter truncates fp32 -> bf16 where the GPU rounds to nearest;
bench/kernel_check_gpu.py checks the compiled kernel bit for bit at real shapes).
"""

from __future__ import annotations

import pytest
import torch

from tests.triton_interpret import DEVICE, randn, run_module_in_fresh_process, skip_unless_runs_here

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from kernels import reference as ref
from kernels import triton as tk

RTOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _interpreted_or_on_gpu(request: pytest.FixtureRequest) -> None:
    skip_unless_runs_here(request)


def test_interpreted_suite_in_a_fresh_process():
    run_module_in_fresh_process(__file__)


def qkv_views(tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype):
    """q, k, v: [T, H, D] views into one fused projection output, as the model splits it."""
    qkv = randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    return (q.view(tokens, num_heads, head_dim), k.view(tokens, num_kv_heads, head_dim),
            v.view(tokens, num_kv_heads, head_dim))


@pytest.mark.parametrize(
    ("dtype", "num_heads", "num_kv_heads", "head_dim", "block_size"),
    [
        (torch.float32, 4, 2, 64, 16),
        (torch.bfloat16, 8, 1, 128, 32),  # GQA 8
        (torch.float16, 6, 6, 64, 128),  # no GQA, one block holds every token
        (torch.bfloat16, 12, 4, 128, 16),  # head counts that are not powers of two
        (torch.float16, 8, 2, 128, 1),
        (torch.float32, 2, 1, 128, 64),
    ],
)
def test_rope_and_write_kv_cache_matches_the_two_ops(dtype, num_heads, num_kv_heads, head_dim, block_size):
    """The fused op equals apply_rope then write_kv_cache: bit for bit against the two Triton
    kernels it replaces, and to within rounding against the torch reference."""
    torch.manual_seed(12)
    tokens, num_blocks = 7, 9
    q, k, v = qkv_views(tokens, num_heads, num_kv_heads, head_dim, dtype)
    positions = torch.tensor([0, 1, 5, 63, 64, 200, 17], device=DEVICE)
    cos, sin = randn(256, head_dim), randn(256, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:tokens]
    caches = [randn(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype) for _ in range(2)]
    two_ops, reference = [c.clone() for c in caches], [c.clone() for c in caches]

    got_q = tk.apply_rope_and_write_kv_cache(q, k, v, positions, cos, sin, caches[0], caches[1], slots)
    want_q, want_k = tk.apply_rope(q, k, positions, cos, sin)
    tk.write_kv_cache(want_k, v, two_ops[0], two_ops[1], slots)
    assert got_q.is_contiguous()
    assert torch.equal(got_q, want_q)
    assert torch.equal(caches[0], two_ops[0]) and torch.equal(caches[1], two_ops[1])

    ref_q = ref.apply_rope_and_write_kv_cache(q, k, v, positions, cos, sin, reference[0], reference[1], slots)
    # Each product is rounded before the sum (truncated by the interpreter), so an element
    # whose two products cancel keeps their error: bound it by ulps of the largest input.
    for got, want, x in ((got_q, ref_q, q), (caches[0], reference[0], k)):
        atol = 2 * torch.finfo(dtype).eps * float(x.abs().max()) * float(cos.abs().max() + sin.abs().max())
        torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=atol)
    assert torch.equal(caches[1], reference[1])


def test_rope_and_write_kv_cache_skips_negative_slots_and_empty_steps():
    """A negative slot (as write_kv_cache treats it) still rotates q but writes no K/V."""
    torch.manual_seed(13)
    q, k, v = qkv_views(4, 4, 2, 64, torch.float32)
    positions = torch.tensor([3, 4, 9, 10], device=DEVICE)
    cos, sin = randn(16, 64), randn(16, 64)
    caches = [torch.full((3, 16, 2, 64), float("nan"), device=DEVICE) for _ in range(2)]
    slots = torch.tensor([5, -1, 40, -1], device=DEVICE)
    got_q = tk.apply_rope_and_write_kv_cache(q, k, v, positions, cos, sin, caches[0], caches[1], slots)
    want_q, want_k = tk.apply_rope(q, k, positions, cos, sin)
    assert torch.equal(got_q, want_q)
    flat_k, flat_v = (c.view(-1, 2, 64) for c in caches)
    assert torch.equal(flat_k[[5, 40]], want_k[[0, 2]]) and torch.equal(flat_v[[5, 40]], v[[0, 2]])
    assert flat_k.isnan().sum() == flat_k.numel() - 2 * 2 * 64

    empty = tk.apply_rope_and_write_kv_cache(q[:0], k[:0], v[:0], positions[:0], cos, sin, caches[0], caches[1],
                                             slots[:0])
    assert empty.shape == (0, 4, 64)
