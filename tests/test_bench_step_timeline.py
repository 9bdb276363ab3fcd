"""The step timeline's phase split and per-bucket host accounting."""

from __future__ import annotations

from bench.step_timeline import StepRecord, StepTimeline, summarize


def _step(decode_only: bool, began: float, launch_s: float, wait_s: float, sequences: int = 4) -> StepRecord:
    tokens = sequences if decode_only else 100
    return StepRecord(decode_only, sequences, tokens, began, began + launch_s, wait_s)


def test_prompt_phase_then_equal_decode_buckets() -> None:
    timeline = StepTimeline()
    timeline.steps = [
        _step(False, 0.0, 0.01, 0.5),
        _step(False, 1.0, 0.01, 0.5),
        _step(True, 2.0, 0.002, 0.02),
        _step(True, 2.03, 0.002, 0.02),
        _step(True, 2.06, 0.002, 0.0),  # a host-paced step: no wait
        _step(True, 2.10, 0.002, 0.0),
    ]
    phases = summarize(timeline, ended_at=2.14, decode_buckets=2)
    prompt = phases["prompt_phase"]
    assert (prompt["steps"], prompt["wall_s"], prompt["tokens_per_step"]) == (2, 2.0, 100.0)
    assert prompt["rest_ms"] == 490.0  # (2.0 - 0.02 - 1.0) s over 2 steps
    first, second = phases["decode_buckets"]
    assert (first["steps"], first["ms_per_step"], first["wait_ms"]) == (2, 30.0, 20.0)
    assert first["rest_ms"] == 8.0
    assert (second["steps"], second["ms_per_step"], second["wait_ms"]) == (2, 40.0, 0.0)
    assert phases["mixed_after_first_decode"] == 0
