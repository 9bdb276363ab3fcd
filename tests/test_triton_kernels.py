"""Triton kernels against their torch references, on CPU under ``TRITON_INTERPRET=1``.

The interpreter runs every kernel on CPU tensors, so CI checks the indexing,
masking, paging and split-K logic without a GPU (bench/kernel_check_gpu.py
runs the same checks compiled, at real shapes, and reports how many elements
match bit for bit). The interpreter rounds fp32 -> bf16 by truncation where the
GPU rounds to nearest, so bf16 results are compared to within a couple of ulps.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.triton_interpret import DEVICE, randn, run_module_in_fresh_process, skip_unless_runs_here

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from kernels import dispatch
from kernels import reference as ref
from kernels import triton as tk
from kernels.triton.decode_attention import DecodeConfig, decode_attention, decode_config, partition_size_for
from kernels.triton.testing import (
    ATTENTION_TOLERANCE,
    attention_oracle,
    make_attention_case,
    relative_error,
)

# Elementwise kernels: within two ulps of the reference in the narrow dtypes.
ELEMENTWISE_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


@pytest.fixture(autouse=True)
def _interpreted_or_on_gpu(request: pytest.FixtureRequest) -> None:
    skip_unless_runs_here(request)


def test_interpreted_suite_in_a_fresh_process():
    run_module_in_fresh_process(__file__)


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    rtol, atol = ELEMENTWISE_TOL[want.dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_backend_is_registered_with_the_reference_interface(monkeypatch):
    monkeypatch.setenv("TANDEM_KERNELS", "triton")
    assert dispatch.select_backend(torch.device("cpu")) is tk
    monkeypatch.delenv("TANDEM_KERNELS")
    assert dispatch.backend_name_for(torch.device("cuda")) == "triton"
    for name in ref.__all__:
        got, want = (inspect.signature(getattr(m, name), eval_str=True) for m in (tk, ref))
        assert got == want, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_with_residual(dtype):
    torch.manual_seed(0)
    x, residual, weight = randn(7, 96, dtype=dtype), randn(7, 96, dtype=dtype), randn(96, dtype=dtype)
    got, got_sum = tk.rms_norm(x, weight, 1e-6, residual)
    want, want_sum = ref.rms_norm(x, weight, 1e-6, residual)
    assert_close(got_sum, want_sum)
    assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_per_head_on_a_strided_view(dtype):
    """The q/k norm of Qwen3: a [T, H, D] view into the fused qkv projection, no residual."""
    torch.manual_seed(1)
    qkv = randn(5, 6 * 32, dtype=dtype)
    q = qkv[:, : 4 * 32].view(5, 4, 32)
    weight = randn(32, dtype=dtype)
    got, passthrough = tk.rms_norm(q, weight, 1e-5)
    assert passthrough is q
    assert_close(got, ref.rms_norm(q, weight, 1e-5)[0])


@pytest.mark.parametrize(("dtype", "num_heads", "num_kv_heads", "head_dim"),
                         [(torch.float32, 4, 2, 64), (torch.bfloat16, 8, 1, 128), (torch.float16, 6, 6, 32)])
def test_rope_on_qkv_views(dtype, num_heads, num_kv_heads, head_dim):
    torch.manual_seed(2)
    tokens = 6
    qkv = randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q = qkv[:, : num_heads * head_dim].view(tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(tokens, num_kv_heads, head_dim)
    positions = torch.tensor([0, 1, 5, 63, 64, 200], device=DEVICE)
    cos, sin = randn(256, head_dim), randn(256, head_dim)
    got_q, got_k = tk.apply_rope(q, k, positions, cos, sin)
    want_q, want_k = ref.apply_rope(q, k, positions, cos, sin)
    assert_close(got_q, want_q)
    assert_close(got_k, want_k)


@pytest.mark.parametrize(("dtype", "inter"), [(torch.float32, 48), (torch.bfloat16, 100), (torch.float16, 1500)])
def test_silu_and_mul(dtype, inter):
    torch.manual_seed(3)
    x = randn(3, 2 * inter, dtype=dtype) * 4
    assert_close(tk.silu_and_mul(x), ref.silu_and_mul(x))


@pytest.mark.parametrize(("dtype", "block_size", "num_kv_heads", "head_dim"),
                         [(torch.float32, 16, 2, 64), (torch.bfloat16, 32, 8, 128), (torch.float16, 128, 1, 64)])
def test_write_kv_cache_scattered_slots(dtype, block_size, num_kv_heads, head_dim):
    torch.manual_seed(4)
    num_blocks, tokens = 12, 9
    kv = randn(tokens, 3 * num_kv_heads * head_dim, dtype=dtype)  # strided views, as the model passes them
    key = kv[:, : num_kv_heads * head_dim].view(tokens, num_kv_heads, head_dim)
    value = kv[:, num_kv_heads * head_dim : 2 * num_kv_heads * head_dim].view(tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:tokens]
    caches = [randn(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype) for _ in range(2)]
    want = [c.clone() for c in caches]
    tk.write_kv_cache(key, value, caches[0], caches[1], slots)
    ref.write_kv_cache(key, value, want[0], want[1], slots)
    assert torch.equal(caches[0], want[0]) and torch.equal(caches[1], want[1])


# Decodes (one of them long), a fresh prompt, prompt chunks after cached prefixes;
# the (context, new) pairs are interleaved as a real scheduler step can be.
MIXED = [(9, 1), (0, 7), (40, 21), (300, 1), (1, 1), (17, 2)]


@pytest.mark.parametrize(
    ("block_size", "head_dim", "num_heads", "num_kv_heads", "dtype"),
    [
        (16, 64, 4, 4, torch.float32),  # GQA ratio 1
        (32, 128, 8, 2, torch.bfloat16),  # ratio 4
        (16, 128, 8, 1, torch.float16),  # ratio 8
        (64, 64, 16, 2, torch.float32),  # ratio 8, blocks larger than a key tile
    ],
)
def test_paged_attention_mixed_batch(block_size, head_dim, num_heads, num_kv_heads, dtype):
    case = make_attention_case(MIXED, num_heads, num_kv_heads, head_dim, block_size, dtype, DEVICE, seed=5)
    tk.write_kv_cache(case.new_keys, case.new_values, case.key_cache, case.value_cache, case.meta.slot_mapping)
    scale = head_dim**-0.5
    got = tk.paged_attention(case.query, case.key_cache, case.value_cache, case.meta, scale)
    assert got.dtype == dtype
    assert relative_error(got, attention_oracle(case, scale)) < ATTENTION_TOLERANCE[dtype]


def test_prefill_only_long_chunk_after_prefix():
    """Several query tiles per sequence, diagonal tiles mid-chunk, no decodes in the step."""
    case = make_attention_case([(50, 70), (0, 33)], 4, 2, 64, 16, torch.float32, DEVICE, seed=6)
    ref.write_kv_cache(case.new_keys, case.new_values, case.key_cache, case.value_cache, case.meta.slot_mapping)
    got = tk.paged_attention(case.query, case.key_cache, case.value_cache, case.meta, 0.125)
    assert relative_error(got, attention_oracle(case, 0.125)) < 1e-5


def test_decode_with_a_graph_bound_on_lengths():
    """What a CUDA graph passes: max_seq_len far above every real length, split count fixed by it."""
    shapes = [(3, 1), (150, 1), (700, 1), (0, 1)]
    case = make_attention_case(shapes, 8, 2, 64, 16, torch.float32, DEVICE, seed=9)
    ref.write_kv_cache(case.new_keys, case.new_values, case.key_cache, case.value_cache, case.meta.slot_mapping)
    out = torch.full_like(case.query, float("nan"))
    m = case.meta
    decode_attention(case.query, case.key_cache, case.value_cache, m.block_tables, m.seq_lens,
                     m.query_start_loc, 8192, 0.125, out)
    assert relative_error(out, attention_oracle(case, 0.125)) < 1e-5


@pytest.mark.parametrize(("num_splits", "block_size"), [(1, 16), (3, 32), (8, 16), (40, 16)])
def test_decode_split_k_writes_only_decode_rows(num_splits, block_size):
    """Forced split counts, including splits past short sequences' ends (which must write nothing)."""
    shapes = [(70, 1), (5, 3), (400, 1), (0, 1)]
    case = make_attention_case(shapes, 8, 2, 64, block_size, torch.float32, DEVICE, seed=7)
    ref.write_kv_cache(case.new_keys, case.new_values, case.key_cache, case.value_cache, case.meta.slot_mapping)
    out = torch.full_like(case.query, float("nan"))
    m = case.meta
    decode_attention(case.query, case.key_cache, case.value_cache, m.block_tables, m.seq_lens,
                     m.query_start_loc, m.max_seq_len, 0.125, out,
                     DecodeConfig(block_n=64, num_splits=num_splits))
    want = attention_oracle(case, 0.125)
    rows = m.decode_token_index
    assert relative_error(out[rows], want[rows]) < 1e-5
    prefill_rows = torch.ones(out.shape[0], dtype=torch.bool)
    prefill_rows[rows.cpu()] = False
    assert out[prefill_rows.to(DEVICE)].isnan().all()


def test_decode_config_rule():
    cpu = torch.device("cpu")  # the interpreter's rule sees 4 SMs
    small = decode_config(1, 1, 1000, 128, cpu)
    assert small.num_splits > 1
    # Every split of the longest sequence gets keys; shorter ones split into whole tiles too.
    assert (small.num_splits - 1) * partition_size_for(1000, small.num_splits, small.block_n) < 1000
    assert partition_size_for(130, small.num_splits, small.block_n) % small.block_n == 0
    assert decode_config(256, 8, 4096, 128, cpu).num_splits == 1  # enough programs already
    assert decode_config(1, 1, 40, 128, cpu).num_splits == 1  # too short to split


def test_paged_attention_single_long_decode_splits_by_rule():
    """One sequence, one KV head: the rule splits its keys (5 splits on the interpreter's 4 "SMs")."""
    case = make_attention_case([(300, 1)], 4, 1, 64, 16, torch.float32, DEVICE, seed=8)
    assert decode_config(1, 1, 301, 64, DEVICE).num_splits > 1 or DEVICE.type == "cuda"
    ref.write_kv_cache(case.new_keys, case.new_values, case.key_cache, case.value_cache, case.meta.slot_mapping)
    got = tk.paged_attention(case.query, case.key_cache, case.value_cache, case.meta, 0.125)
    assert relative_error(got, attention_oracle(case, 0.125)) < 1e-5


def test_graph_padded_decode_steps_match_eager(tiny_llama, monkeypatch):
    """Decode steps through the CUDA-graph runner's static, padded buffers (run uncaptured here)
    give the eager forward's hidden states, and padding rows touch only the scratch block."""
    from services.engine.batch_inputs import build_batch_inputs
    from services.engine.config import EngineConfig
    from services.engine.cuda_graphs import DecodeGraphs
    from services.engine.decode_inputs import DecodeLayout
    from services.engine.model_loading import load_model
    from services.engine.request import Request
    from services.engine.sampling_params import SamplingParams
    from services.engine.scheduler import ScheduledChunk

    monkeypatch.setenv("TANDEM_KERNELS", "triton")
    model = load_model(EngineConfig(model=str(tiny_llama), device=str(DEVICE), dtype="float32",
                                    max_model_len=256)).model
    assert model.ops is tk
    shape, block_size, num_blocks = model.shape, 16, 48
    layout = DecodeLayout(max_batch=8, max_blocks=256 // block_size, block_size=block_size,
                          scratch_block=num_blocks)
    gen = torch.Generator().manual_seed(11)
    # NaN wherever nothing was written: a read of a wrong slot poisons the row.
    caches = [tuple(torch.full((num_blocks + 1, block_size, shape.num_kv_heads, shape.head_dim), float("nan"),
                               device=DEVICE) for _ in range(2)) for _ in range(shape.num_layers)]
    graphs = DecodeGraphs(model, caches, layout, DEVICE)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    requests = []
    for i, context in enumerate([0, 5, 16, 33, 70, 120, 200]):
        tokens = torch.randint(3, 200, (context + 1,), generator=gen).tolist()
        request = Request(str(i), tokens, SamplingParams())
        blocks = [free.pop() for _ in range(context // block_size + 1)]
        for cache in (c for layer in caches for c in layer):
            for pos in range(context):
                cache[blocks[pos // block_size], pos % block_size] = torch.randn(
                    shape.num_kv_heads, shape.head_dim, generator=gen)
        requests.append((request, context, blocks))

    # Sizes 8, 4, 8 and 1 with 1, 1, 3 and 0 padding rows; later tables are narrower than stale ones.
    for picked in ([0, 1, 2, 3, 4, 5, 6], [6, 2, 4], [1, 3, 5, 0, 2], [3]):
        chunks = [ScheduledChunk(requests[i][0], requests[i][1], 1, requests[i][2]) for i in picked]
        eager_caches = [(k.clone(), v.clone()) for k, v in caches]
        inputs = build_batch_inputs(chunks, block_size, DEVICE, slot_views=False)
        want = model(inputs.input_ids, inputs.positions, eager_caches, inputs.meta)
        got = graphs.run(chunks)
        assert got.shape == want.shape and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for (key_cache, value_cache), (eager_k, _) in zip(caches, eager_caches):
            torch.testing.assert_close(key_cache[:num_blocks], eager_k[:num_blocks], equal_nan=True)
            # Padding rows write slot 0 of the scratch block and nothing else.
            assert torch.isfinite(key_cache[num_blocks, 0]).all()
            assert key_cache[num_blocks, 1:].isnan().all()
