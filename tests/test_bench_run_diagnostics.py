"""The run diagnostics see real collector passes and real Triton kernel caches."""

from __future__ import annotations

import gc

from bench.run_diagnostics import GcPauses, compiled_triton_variants, new_variants


def test_gc_pauses_counts_a_full_collection() -> None:
    with GcPauses() as pauses:
        gc.collect()
    summary = pauses.summary()
    assert summary["gc_collections"]["2"] >= 1
    assert summary["gc_ms"]["2"] >= 0.0
    assert len(summary["gc_full_pass_at_s"]) == summary["gc_collections"]["2"]
    assert pauses.longest_s >= 0.0
    gc.collect()
    assert pauses.count.get(2) == summary["gc_collections"]["2"]  # removed on exit


def test_variant_snapshots_list_only_the_new_keys() -> None:
    snapshot = compiled_triton_variants()
    assert all(name.endswith("_kernel") for name in snapshot)
    before = {"_a_kernel": {"k1"}}
    after = {"_a_kernel": {"k1", "k2"}, "_b_kernel": {"k3"}, "_c_kernel": set()}
    assert new_variants(before, after) == {"_a_kernel": ["k2"], "_b_kernel": ["k3"]}
