"""Reference kernels against HF's own modules and a naive contiguous attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from kernels import cpu as cpu_ops
from kernels import reference as ref
from services.engine.batch_inputs import build_batch_inputs
from services.engine.models.rope_table import build_rope_table
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledChunk


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_with_residual_is_bit_identical_to_hf(dtype):
    torch.manual_seed(0)
    x, residual = torch.randn(7, 64, dtype=dtype), torch.randn(7, 64, dtype=dtype)
    hf = LlamaRMSNorm(64, eps=1e-6).to(dtype)
    hf.weight.data = torch.randn(64, dtype=dtype)
    out, new_residual = ref.rms_norm(x, hf.weight.data, 1e-6, residual)
    assert torch.equal(new_residual, x + residual)
    assert torch.equal(out, hf(x + residual))


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ],
)
def test_rope_matches_hf(rope_parameters):
    config = LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=256, rope_parameters=rope_parameters)
    cos_cache, sin_cache = build_rope_table(config, 32, 256, torch.device("cpu"))
    positions = torch.tensor([0, 1, 5, 63, 64, 200])
    q, k = torch.randn(6, 4, 32), torch.randn(6, 2, 32)
    got_q, got_k = ref.apply_rope(q, k, positions, cos_cache, sin_cache)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions[None])
    # HF lays q out as [batch, heads, seq, dim].
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    assert torch.allclose(got_q, want_q[0].transpose(0, 1), atol=1e-6)
    assert torch.allclose(got_k, want_k[0].transpose(0, 1), atol=1e-6)


def test_silu_and_mul():
    x = torch.randn(5, 2 * 48)
    assert torch.equal(ref.silu_and_mul(x), F.silu(x[:, :48]) * x[:, 48:])


def test_cpu_linear_matches_reference():
    torch.manual_seed(1)
    weight, bias = torch.randn(96, 40), torch.randn(96)
    prepared = cpu_ops.prepare_linear_weight(weight)
    for rows in (1, 13, 64, 300):
        x = torch.randn(rows, 40)
        assert torch.allclose(cpu_ops.linear(x, weight, bias, prepared), F.linear(x, weight, bias), atol=1e-4)


def naive_causal_attention(q, k, v, context_len, scale):
    """q: [n, Hq, D] at positions context_len.., k/v: [context_len + n, Hkv, D]."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    q_pos = torch.arange(context_len, context_len + q.shape[0])[:, None]
    scores = scores.masked_fill(torch.arange(k.shape[0])[None, :] > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.double()).float()


@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_attention_mixed_batch_matches_naive(block_size):
    """Decodes, a fresh prompt and a chunk after a cached prefix, with scattered block tables."""
    torch.manual_seed(2)
    num_blocks, hq, hkv, d = 64, 6, 2, 16
    key_cache, value_cache = torch.randn(num_blocks, block_size, hkv, d), torch.randn(num_blocks, block_size, hkv, d)
    # (tokens before this step, new tokens this step)
    shapes = [(9, 1), (0, 7), (13, 5), (30, 1), (1, 1)]
    free = torch.randperm(num_blocks).tolist()
    chunks, full_kv = [], []
    for i, (ctx, new) in enumerate(shapes):
        total = ctx + new
        blocks = [free.pop() for _ in range(-(-total // block_size))]
        request = Request(str(i), list(range(total)), SamplingParams())
        chunks.append(ScheduledChunk(request, ctx, new, blocks))
        k, v = torch.randn(total, hkv, d), torch.randn(total, hkv, d)
        full_kv.append((k, v))
        for pos in range(ctx):  # the cached prefix is already in its blocks
            key_cache[blocks[pos // block_size], pos % block_size] = k[pos]
            value_cache[blocks[pos // block_size], pos % block_size] = v[pos]
    inputs = build_batch_inputs(chunks, block_size, torch.device("cpu"))
    new_k = torch.cat([k[ctx:] for (k, _), (ctx, _) in zip(full_kv, shapes)])
    new_v = torch.cat([v[ctx:] for (_, v), (ctx, _) in zip(full_kv, shapes)])
    ref.write_kv_cache(new_k, new_v, key_cache, value_cache, inputs.meta.slot_mapping)
    query = torch.randn(new_k.shape[0], hq, d)
    out = ref.paged_attention(query, key_cache, value_cache, inputs.meta, d**-0.5)
    start = 0
    for (k, v), (ctx, new) in zip(full_kv, shapes):
        want = naive_causal_attention(query[start : start + new], k, v, ctx, d**-0.5)
        assert torch.allclose(out[start : start + new], want, atol=1e-5), (ctx, new)
        start += new


def test_cpu_backend_exposes_every_reference_op():
    for name in ref.__all__:
        assert callable(getattr(cpu_ops, name)), name
    assert cpu_ops.apply_rope_and_write_kv_cache is ref.apply_rope_and_write_kv_cache
