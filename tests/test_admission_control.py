"""The router's admission controller on its own, with a clock the test moves."""

from __future__ import annotations

import pytest

from services.router.admission import (
    MIN_RETRY_AFTER_S,
    AdmissionController,
    AdmissionLimits,
    AdmissionRefused,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(**limits) -> tuple[AdmissionController, Clock]:
    clock = Clock()
    return AdmissionController(AdmissionLimits(**limits), clock=clock), clock


def test_a_lone_request_is_always_admitted():
    admission, _ = controller(max_queued_requests=1, max_queued_prompt_tokens=10, max_predicted_ttft_ms=1)
    ticket = admission.admit(10_000)
    assert admission.num_queued == 1 and admission.queued_prompt_tokens == 10_000
    ticket.release()
    assert admission.num_queued == 0 and admission.queued_prompt_tokens == 0


def test_queue_bounds_refuse_with_reason_and_retry_hint():
    admission, _ = controller(max_queued_requests=2, max_queued_prompt_tokens=100)
    admission.admit(40)
    with pytest.raises(AdmissionRefused) as info:
        admission.admit(61)
    assert info.value.reason == "queued_prompt_tokens" and info.value.retry_after_s == MIN_RETRY_AFTER_S
    admission.admit(60)
    with pytest.raises(AdmissionRefused) as info:
        admission.admit(1)
    assert info.value.reason == "queued_requests"
    assert admission.refusals == {"queued_requests": 1, "queued_prompt_tokens": 1, "predicted_ttft": 0}


def test_rate_is_drained_tokens_over_busy_time():
    admission, clock = controller()
    assert admission.prefill_tokens_per_s is None and admission.predicted_ttft_s(10) is None
    first = admission.admit(300)
    clock.now += 10.0  # idle time before any admission does not count; queued time does
    assert first.started() == pytest.approx(10.0)
    assert admission.prefill_tokens_per_s == pytest.approx(30.0)
    clock.now += 50.0  # idle: nothing queued
    second, third = admission.admit(100), admission.admit(200)
    clock.now += 5.0
    second.started()
    third.started()  # same instant: a ratio of sums, not an infinite rate
    # Weighted sums: tokens 0.9*(0.9*300 + 100) + 200, seconds 0.9*(0.9*10 + 5) + 0.
    assert admission.prefill_tokens_per_s == pytest.approx((0.9 * (0.9 * 300 + 100) + 200) / (0.9 * (0.9 * 10 + 5)))


def test_predicted_ttft_refuses_only_behind_a_queue():
    admission, clock = controller(max_predicted_ttft_ms=1000)
    warmup = admission.admit(100)
    clock.now += 1.0
    warmup.started()  # 100 tokens/s
    ahead = admission.admit(80)  # queue empty: admitted whatever the prediction
    assert admission.predicted_ttft_s(10) == pytest.approx(0.9)
    admission.admit(10)
    with pytest.raises(AdmissionRefused) as info:
        admission.admit(20)  # (90 + 20) / 100 s > 1 s
    assert info.value.reason == "predicted_ttft"
    assert info.value.retry_after_s == pytest.approx(MIN_RETRY_AFTER_S)
    ahead.release()
    admission.admit(20)  # (10 + 20) / 100 s: fits now
