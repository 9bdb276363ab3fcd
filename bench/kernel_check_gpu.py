"""The Triton kernels against their torch references on the GPU, at real model shapes.

The compiled counterpart of tests/test_triton_kernels.py (which runs the same
kernels interpreted on tiny shapes in CI), plus a KV cache of more than 2^31
elements read and written at block ids past the int32 range (attention and
the fused RoPE + cache write), and a tiny model generating greedily with both
backends. One JSON line per check; exits 1 if any check fails.

    python -m bench.kernel_check_gpu
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import triton

from bench.common import git_commit
from kernels import reference as ref
from kernels import triton as tk
from kernels.triton.testing import ATTENTION_TOLERANCE, attention_oracle, make_attention_case, relative_error

CUDA = torch.device("cuda")
FAILED: list[str] = []


def report(check: str, ok: bool, **fields: object) -> None:
    if not ok:
        FAILED.append(check)
    print(json.dumps({"check": check, "ok": bool(ok), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "triton": triton.__version__, "commit": git_commit(), **fields}), flush=True)


def ulp_check(got: torch.Tensor, want: torch.Tensor, max_ulps: int = 2) -> dict[str, object]:
    """Exact-match fraction, and whether every element is within ``max_ulps`` ulps (eps * |want|).

    Not bit-exact by design where the GPU's fast exp/rsqrt or the reduction
    order differ from torch's; the exact fraction shows how rare that is.
    """
    assert got.shape == want.shape and got.dtype == want.dtype
    eps = torch.finfo(want.dtype).eps
    if want.dtype == torch.float32:
        max_ulps *= 4  # fp32 outputs carry no final rounding to hide exp/summation-order differences
    diff = (got.float() - want.float()).abs()
    within = diff <= max_ulps * eps * want.float().abs() + torch.finfo(want.dtype).tiny
    return {"exact_fraction": round(float((got == want).float().mean()), 6),
            "max_abs_diff": float(diff.max()), "ok": bool(within.all()) and not got.isnan().any()}


def check_elementwise(dtype: torch.dtype) -> None:
    tokens, hidden, heads, kv_heads, head_dim, inter = 4096, 4096, 32, 8, 128, 14336
    name = str(dtype).removeprefix("torch.")
    x, residual = torch.randn(tokens, hidden, device=CUDA, dtype=dtype), torch.randn(tokens, hidden, device=CUDA, dtype=dtype)
    weight = torch.randn(hidden, device=CUDA, dtype=dtype)
    (got, got_sum), (want, want_sum) = tk.rms_norm(x, weight, 1e-5, residual), ref.rms_norm(x, weight, 1e-5, residual)
    res = ulp_check(got, want)
    report(f"rms_norm_residual_{name}", res.pop("ok") and torch.equal(got_sum, want_sum),
           residual_sum_exact=torch.equal(got_sum, want_sum), **res)

    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=CUDA, dtype=dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    norm_w = torch.randn(head_dim, device=CUDA, dtype=dtype)
    res = ulp_check(tk.rms_norm(q, norm_w, 1e-6)[0], ref.rms_norm(q, norm_w, 1e-6)[0])
    report(f"rms_norm_per_head_view_{name}", res.pop("ok"), **res)

    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=CUDA).float() / head_dim))
    angles = torch.outer(torch.arange(8192, device=CUDA).float(), inv_freq).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    positions = torch.randint(0, 8192, (tokens,), device=CUDA)
    got_q, got_k = tk.apply_rope(q, k, positions, cos, sin)
    want_q, want_k = ref.apply_rope(q, k, positions, cos, sin)
    rq, rk = ulp_check(got_q, want_q), ulp_check(got_k, want_k)
    report(f"rope_{name}", rq.pop("ok") and rk.pop("ok"), q=rq, k=rk)

    gate_up = torch.randn(tokens, 2 * inter, device=CUDA, dtype=dtype) * 3
    res = ulp_check(tk.silu_and_mul(gate_up), ref.silu_and_mul(gate_up), max_ulps=4)
    report(f"silu_and_mul_{name}", res.pop("ok"), **res)

    caches = [torch.randn(2048, 16, kv_heads, head_dim, device=CUDA, dtype=dtype) for _ in range(2)]
    want_caches = [c.clone() for c in caches]
    slots = torch.randperm(2048 * 16, device=CUDA)[:tokens]
    tk.write_kv_cache(k, v, caches[0], caches[1], slots)
    ref.write_kv_cache(k, v, want_caches[0], want_caches[1], slots)
    report(f"write_kv_cache_{name}", all(torch.equal(a, b) for a, b in zip(caches, want_caches)))
    check_rope_and_write_kv_cache(name, q, k, v, positions, cos, sin, caches, slots)


def check_rope_and_write_kv_cache(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                  caches: list[torch.Tensor], slots: torch.Tensor) -> None:
    """The fused op against the two Triton launches it replaces (bit for bit) and the reference."""
    fused, two_ops, reference = ([c.clone() for c in caches] for _ in range(3))
    got_q = tk.apply_rope_and_write_kv_cache(q, k, v, positions, cos, sin, fused[0], fused[1], slots)
    want_q, want_k = tk.apply_rope(q, k, positions, cos, sin)
    tk.write_kv_cache(want_k, v, two_ops[0], two_ops[1], slots)
    exact = torch.equal(got_q, want_q) and all(torch.equal(a, b) for a, b in zip(fused, two_ops))
    ref_q = ref.apply_rope_and_write_kv_cache(q, k, v, positions, cos, sin, reference[0], reference[1], slots)
    rq, rk = ulp_check(got_q, ref_q), ulp_check(fused[0], reference[0])
    v_exact = torch.equal(fused[1], reference[1])
    times = {f"t{n}_us": time_rope_and_write_kv_cache(q[:n], k[:n], v[:n], positions[:n], cos, sin, fused,
                                                        slots[:n]) for n in (1, 64, q.shape[0])}
    report(f"rope_and_write_kv_cache_{name}", exact and rq.pop("ok") and rk.pop("ok") and v_exact,
           same_as_two_triton_ops=exact, q=rq, k_cache=rk, v_cache_exact=v_exact, **times)


def time_rope_and_write_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                                 cos: torch.Tensor, sin: torch.Tensor, caches: list[torch.Tensor],
                                 slots: torch.Tensor) -> dict[str, float]:
    """Median microseconds of the fused op and of the two launches it replaces, replayed in a
    CUDA graph as a decode step runs them (so host launch overhead is not what is measured)."""
    def separate() -> None:
        _, rotated_k = tk.apply_rope(q, k, positions, cos, sin)
        tk.write_kv_cache(rotated_k, v, caches[0], caches[1], slots)

    fused_ms = triton.testing.do_bench_cudagraph(
        lambda: tk.apply_rope_and_write_kv_cache(q, k, v, positions, cos, sin, caches[0], caches[1], slots),
        return_mode="median")
    separate_ms = triton.testing.do_bench_cudagraph(separate, return_mode="median")
    return {"fused": round(fused_ms * 1e3, 1), "separate": round(separate_ms * 1e3, 1)}


def check_attention(name: str, shapes: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int,
                    block_size: int, dtype: torch.dtype, **case_args: int) -> None:
    case = make_attention_case(shapes, heads, kv_heads, head_dim, block_size, dtype, CUDA, **case_args)
    tk.write_kv_cache(case.new_keys, case.new_values, case.key_cache, case.value_cache, case.meta.slot_mapping)
    scale = head_dim**-0.5
    got = tk.paged_attention(case.query, case.key_cache, case.value_cache, case.meta, scale)
    err = relative_error(got, attention_oracle(case, scale))
    us = triton.testing.do_bench(
        lambda: tk.paged_attention(case.query, case.key_cache, case.value_cache, case.meta, scale),
        return_mode="median") * 1e3
    report(f"paged_attention_{name}", err < ATTENTION_TOLERANCE[dtype], rel_err=err,
           tol=ATTENTION_TOLERANCE[dtype], dtype=str(dtype), heads=heads, kv_heads=kv_heads, head_dim=head_dim,
           block_size=block_size, num_seqs=len(shapes), num_tokens=case.query.shape[0],
           cache_elements=case.key_cache.numel(), time_us=round(us, 1))


def check_skinny_linear() -> None:
    """Few-row linears at Llama-8B widths against a float64 product: error no worse than cuBLAS's."""
    from kernels.triton.skinny_linear import skinny_linear

    for name, out_rows, depth, gated in (("qkv", 6144, 4096, False), ("gate_up", 28672, 4096, True),
                                         ("down", 4096, 14336, False)):
        for rows, dtype in ((1, torch.bfloat16), (7, torch.float16), (16, torch.bfloat16)):
            x = torch.randn(rows, depth, device=CUDA, dtype=dtype)
            weight = (torch.randn(out_rows, depth, device=CUDA) / depth**0.5).to(dtype)
            bias = torch.randn(out_rows, device=CUDA, dtype=dtype) if name == "qkv" else None
            exact = torch.nn.functional.linear(x.double(), weight.double(), None if bias is None else bias.double())
            blas = torch.nn.functional.linear(x, weight, bias)
            if gated:
                exact = ref.silu_and_mul(exact)
                blas = tk.silu_and_mul(blas)
            got = skinny_linear(x, weight, bias, gated=gated)
            err, blas_err = relative_error(got, exact), relative_error(blas, exact)
            report(f"skinny_linear_{name}_rows{rows}_{str(dtype).removeprefix('torch.')}",
                   err <= 1.25 * blas_err + 1e-4 and not got.isnan().any(), rel_err=err, cublas_rel_err=blas_err)


def check_large_cache() -> None:
    """> 2^31 elements per cache, every used block at an id whose element offset passes 2^31."""
    heads, kv_heads, head_dim, block_size = 32, 8, 128, 16
    per_block = block_size * kv_heads * head_dim
    first = (1 << 31) // per_block + 8
    shapes = [(2000, 1), (0, 300), (777, 129), (4095, 1), (100, 1)]
    check_attention("int64_offsets", shapes, heads, kv_heads, head_dim, block_size, torch.bfloat16,
                    num_blocks=first + 1200, first_block=first, seed=11)
    torch.cuda.empty_cache()
    check_large_cache_rope_and_write_kv_cache(heads, kv_heads, head_dim, block_size, first)


def check_large_cache_rope_and_write_kv_cache(heads: int, kv_heads: int, head_dim: int, block_size: int,
                                              first: int) -> None:
    """The fused RoPE + cache write into blocks from ``first`` on, past 2^31 elements:
    a wrapped 32-bit offset would land in the blocks below, which must stay zero."""
    tokens = 512
    caches = [torch.zeros(first + 64, block_size, kv_heads, head_dim, device=CUDA, dtype=torch.bfloat16)
              for _ in range(2)]
    slots = first * block_size + torch.randperm(64 * block_size, device=CUDA)[:tokens]
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=CUDA, dtype=torch.bfloat16)
    q, k, v = (t.view(tokens, -1, head_dim) for t in qkv.split([heads * head_dim, kv_heads * head_dim,
                                                                  kv_heads * head_dim], dim=-1))
    positions = torch.randint(0, 4096, (tokens,), device=CUDA)
    cos, sin = torch.rand(4096, head_dim, device=CUDA) * 2 - 1, torch.rand(4096, head_dim, device=CUDA) * 2 - 1
    got_q = tk.apply_rope_and_write_kv_cache(q, k, v, positions, cos, sin, caches[0], caches[1], slots)
    want_q, want_k = tk.apply_rope(q, k, positions, cos, sin)
    flat_k, flat_v = (c.view(-1, kv_heads, head_dim) for c in caches)
    placed = torch.equal(flat_k[slots], want_k) and torch.equal(flat_v[slots], v)
    low_clean = all(int(torch.count_nonzero(c[:first])) == 0 for c in caches)
    report("rope_and_write_kv_cache_int64_offsets", torch.equal(got_q, want_q) and placed and low_clean,
           placed=placed, low_blocks_untouched=low_clean, cache_elements=caches[0].numel())


def check_engine_greedy(arch: str, dtype: str) -> None:
    """A tiny model generating greedily with the torch backend and with Triton: same tokens."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from services.engine.llm import LLM
    from services.engine.sampling_params import SamplingParams
    from tests.fixtures.tiny_models import build_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_checkpoint(arch, Path(tmp) / arch)
        prompts = [[5, 9, 14, 3] * k for k in range(1, 9)] + [list(range(3, 200))]
        params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
        outputs = {}
        for backend in ("torch", "triton"):
            os.environ["TANDEM_KERNELS"] = backend
            llm = LLM(model=str(path), device="cuda", dtype=dtype, num_kv_blocks=256, max_num_batched_tokens=64)
            outputs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
            del llm
        os.environ.pop("TANDEM_KERNELS")
    same = sum(a == b for a, b in zip(outputs["torch"], outputs["triton"]))
    report(f"engine_greedy_{arch}_{dtype}", same == len(prompts), matching_sequences=same, of=len(prompts))


def main() -> None:
    torch.manual_seed(0)
    start = time.time()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        check_elementwise(dtype)
    decodes = [(int(c), 1) for c in torch.randint(1, 4000, (24,), generator=torch.Generator().manual_seed(1))]
    mixed = decodes[:8] + [(0, 700), (1500, 300)] + decodes[8:16] + [(3000, 64), (37, 2)] + decodes[16:]
    check_attention("mixed_bs16_gqa4_bf16", mixed, 32, 8, 128, 16, torch.bfloat16)
    check_attention("mixed_bs64_gqa4_bf16", mixed, 32, 8, 128, 64, torch.bfloat16)
    check_attention("mixed_bs128_d64_gqa8_fp16", mixed, 16, 2, 64, 128, torch.float16)
    check_attention("mixed_bs32_gqa1_fp32", mixed, 8, 8, 128, 32, torch.float32)
    check_attention("decode_only_b1_16k_split", [(16000, 1)], 32, 8, 128, 16, torch.bfloat16)
    check_attention("decode_only_b4_long_d64", [(9000, 1), (3, 1), (5000, 1), (70, 1)], 32, 4, 64, 16,
                    torch.bfloat16)
    check_attention("prefill_only_chunked", [(2048, 512), (0, 1024)], 32, 8, 128, 16, torch.bfloat16)
    check_skinny_linear()
    check_large_cache()
    for arch in ("llama", "qwen3"):
        try:
            check_engine_greedy(arch, "float32")
        except Exception as exc:  # noqa: BLE001 -- report it; keep the kernel results above
            report(f"engine_greedy_{arch}_float32", False, error=repr(exc)[:500])
    print(json.dumps({"summary": True, "failed": FAILED, "seconds": round(time.time() - start, 1)}), flush=True)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
