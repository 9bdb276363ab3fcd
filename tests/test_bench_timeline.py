"""The offline decode profile's timeline arithmetic: busy time is a union, short gaps are not stalls."""

from __future__ import annotations

import json
from pathlib import Path

from bench.offline_step_profile import device_intervals, timeline_summary


def test_busy_is_the_union_and_only_long_gaps_count(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    events = [
        {"cat": "kernel", "name": "attention", "ts": 0.0, "dur": 100.0},
        {"cat": "kernel", "name": "gemm", "ts": 50.0, "dur": 100.0},  # overlaps the first by 50 us
        {"cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 152.0, "dur": 8.0},  # 2 us gap: launch latency
        {"cat": "kernel", "name": "gemm", "ts": 300.0, "dur": 100.0},  # 140 us gap: a stall
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 1000.0},  # host events are ignored
    ]
    trace.write_text(json.dumps({"traceEvents": events}))
    spans = device_intervals(trace)
    assert [name for _, _, name in spans] == ["attention", "gemm", "Memcpy HtoD", "gemm"]
    summary = timeline_summary(spans, steps=2)
    assert summary["span_ms_per_step"] == 0.2
    assert summary["gpu_busy_ms_per_step"] == 0.129  # (150 + 8 + 100) us over 2 steps
    assert summary["gpu_idle_ms_per_step"] == 0.07
    assert summary["idle_gaps_per_step"] == 0.5
    assert summary["top_kernels_ms_per_step"] == {"gemm": 0.1, "attention": 0.05, "Memcpy HtoD": 0.004}
