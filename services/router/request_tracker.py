"""One request's admission ticket and metrics, as its responses stream through the router."""

from __future__ import annotations

import time

from services.common.convert import FINISH_REASON_NAMES
from services.router.admission import QueueTicket
from services.router.metrics import RouterMetrics
from tandem._proto.tandem.v1 import worker_pb2


class RequestTracker:
    def __init__(self, metrics: RouterMetrics, ticket: QueueTicket, arrival: float) -> None:
        self.metrics = metrics
        self.ticket = ticket
        self.arrival = arrival
        self.started = False
        self._last_token_at: dict[int, float] = {}
        self._finish_reasons: list[str] = []
        metrics.prompt_tokens.inc(ticket.prompt_tokens)

    def on_delta(self, index: int, delta: worker_pb2.TokenDelta) -> None:
        now = time.monotonic()
        if not self.started:
            self.started = True
            self.metrics.request_queue_time.observe(self.ticket.started())
            self.metrics.time_to_first_token.observe(now - self.arrival)
            self.metrics.num_requests_running.inc()
        count = len(delta.token_ids)
        if count:
            self.metrics.generation_tokens.inc(count)
            last = self._last_token_at.get(index)
            if last is not None:
                # Tokens that arrive together (a worker's delta can carry several)
                # share the gap evenly: each is one inter-token interval.
                gap = (now - last) / count
                for _ in range(count):
                    self.metrics.inter_token_latency.observe(gap)
            self._last_token_at[index] = now
        if delta.finish_reason:
            self._finish_reasons.append(FINISH_REASON_NAMES.get(delta.finish_reason) or "stop")

    def finish(self, error_code: str | None) -> None:
        """The request ended: with a gRPC status code name on error, None when every sample finished."""
        self.ticket.release()
        if self.started:
            self.metrics.num_requests_running.dec()
        if error_code is not None:
            self.metrics.request_failure.labels(error_code).inc()
            return
        reasons = self._finish_reasons
        # One label per request: the reason that limited it most.
        reason = next((r for r in ("abort", "length") if r in reasons), "stop")
        self.metrics.request_success.labels(reason).inc()
        self.metrics.e2e_request_latency.observe(time.monotonic() - self.arrival)
