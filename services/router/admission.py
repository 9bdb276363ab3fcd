"""Admission control: bound the work the mesh has accepted but not yet started answering.

A request is *queued* from the moment the router accepts it until its first
token comes back, or until it ends without one (error, cancel). Three bounds,
each optional, refuse a new request with RESOURCE_EXHAUSTED:

* ``max_queued_requests``: queued requests, this one included;
* ``max_queued_prompt_tokens``: prompt tokens of the queued requests, this one's included;
* ``max_predicted_ttft_ms``: the predicted time to this request's first token.

Prediction model. Before a first token the mesh's bottleneck is prefill, and
the mesh drains queued prompt tokens at some rate R (tokens/s). A request of
P prompt tokens that arrives behind Q queued prompt tokens then gets its first
token after about ``(Q + P) / R`` seconds. R is measured, not configured: each
time a queued request gets its first token, its P prompt tokens count as
drained, and the wall time since the previous such event, counted only while
something was queued (busy time), as the time it took. R is the ratio of two
exponentially weighted sums, drained tokens over busy seconds, each decayed by
``RATE_DECAY`` per event: a ratio of sums rather than an average of ratios,
because requests batched into one engine step finish together, and the
second of two simultaneous events would alone claim an infinite rate. Until
the first measurement there is no prediction, and the TTFT bound is not applied.

A request that finds the queue empty is always admitted: nothing is ahead of
it, so waiting cannot help it, and refusing it would refuse it forever.

Every refusal carries a retry-after hint: how long the mesh needs, at rate R,
to drain the queued tokens that stand in the way (at least ``MIN_RETRY_AFTER_S``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

RATE_DECAY = 0.9
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0


@dataclass
class AdmissionLimits:
    """``None`` leaves a bound off."""

    max_queued_requests: int | None = None
    max_queued_prompt_tokens: int | None = None
    max_predicted_ttft_ms: float | None = None


class AdmissionRefused(Exception):
    """The mesh is too busy for this request now; ``reason`` names the bound that refused it."""

    def __init__(self, reason: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class QueueTicket:
    """One admitted request's place in the queue."""

    def __init__(self, controller: AdmissionController, prompt_tokens: int, admitted_at: float) -> None:
        self._controller = controller
        self.prompt_tokens = prompt_tokens
        self.admitted_at = admitted_at
        self.queued = True

    def started(self) -> float:
        """The first token arrived: leave the queue, feed the rate estimate; returns the queue time."""
        return self._controller._leave(self, drained=True)

    def release(self) -> None:
        """The request ended; a no-op once it has started."""
        self._controller._leave(self, drained=False)


class AdmissionController:
    def __init__(self, limits: AdmissionLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or AdmissionLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._num_queued = 0
        self._queued_tokens = 0
        self._last_change = clock()
        self._busy_since_sample = 0.0  # queued wall time since the last rate sample
        self._weighted_tokens = 0.0
        self._weighted_seconds = 0.0
        self.refusals: dict[str, int] = {"queued_requests": 0, "queued_prompt_tokens": 0, "predicted_ttft": 0}

    # -- what the metrics read -------------------------------------------------------

    @property
    def num_queued(self) -> int:
        return self._num_queued

    @property
    def queued_prompt_tokens(self) -> int:
        return self._queued_tokens

    @property
    def prefill_tokens_per_s(self) -> float | None:
        """The measured drain rate R, or None before the first measurement."""
        if self._weighted_seconds <= 0.0 or self._weighted_tokens <= 0.0:
            return None
        return self._weighted_tokens / self._weighted_seconds

    def predicted_ttft_s(self, prompt_tokens: int) -> float | None:
        rate = self.prefill_tokens_per_s
        if rate is None:
            return None
        return (self._queued_tokens + prompt_tokens) / rate

    # -- admission -------------------------------------------------------------------

    def admit(self, prompt_tokens: int) -> QueueTicket:
        """A ticket for a request of ``prompt_tokens``; raises :class:`AdmissionRefused`."""
        with self._lock:
            now = self._clock()
            if self._num_queued > 0:
                self._check(prompt_tokens)
            self._account_busy(now)
            self._num_queued += 1
            self._queued_tokens += prompt_tokens
            return QueueTicket(self, prompt_tokens, now)

    def _check(self, prompt_tokens: int) -> None:
        limits = self.limits
        if limits.max_queued_requests is not None and self._num_queued + 1 > limits.max_queued_requests:
            self._refuse("queued_requests", f"{self._num_queued} requests are queued (the bound is "
                         f"{limits.max_queued_requests})", self._queued_tokens)
        tokens_after = self._queued_tokens + prompt_tokens
        if limits.max_queued_prompt_tokens is not None and tokens_after > limits.max_queued_prompt_tokens:
            self._refuse("queued_prompt_tokens", f"{self._queued_tokens} prompt tokens are queued and this "
                         f"request adds {prompt_tokens} (the bound is {limits.max_queued_prompt_tokens})",
                         tokens_after - limits.max_queued_prompt_tokens)
        predicted = self.predicted_ttft_s(prompt_tokens)
        if limits.max_predicted_ttft_ms is not None and predicted is not None:
            bound_s = limits.max_predicted_ttft_ms / 1000.0
            if predicted > bound_s:
                rate = self.prefill_tokens_per_s or 1.0
                self._refuse("predicted_ttft", f"the predicted time to first token is {predicted * 1000:.0f} ms "
                             f"(the bound is {limits.max_predicted_ttft_ms:g} ms)", (predicted - bound_s) * rate)

    def _refuse(self, reason: str, message: str, tokens_in_the_way: float) -> None:
        self.refusals[reason] += 1
        rate = self.prefill_tokens_per_s
        wait = tokens_in_the_way / rate if rate else MIN_RETRY_AFTER_S
        retry_after = min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, wait))
        raise AdmissionRefused(reason, f"the mesh is busy: {message}", retry_after)

    # -- leaving the queue -----------------------------------------------------------

    def _account_busy(self, now: float) -> None:
        if self._num_queued > 0:
            self._busy_since_sample += now - self._last_change
        self._last_change = now

    def _leave(self, ticket: QueueTicket, drained: bool) -> float:
        with self._lock:
            now = self._clock()
            if not ticket.queued:
                return now - ticket.admitted_at
            ticket.queued = False
            self._account_busy(now)
            self._num_queued -= 1
            self._queued_tokens -= ticket.prompt_tokens
            if drained:
                self._weighted_tokens = RATE_DECAY * self._weighted_tokens + ticket.prompt_tokens
                self._weighted_seconds = RATE_DECAY * self._weighted_seconds + self._busy_since_sample
                self._busy_since_sample = 0.0
            return now - ticket.admitted_at
