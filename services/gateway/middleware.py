"""The gateway's outermost layer: count every HTTP request by status, and never leak a traceback.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, which
would buffer streamed responses and hide client disconnects from the app.
An exception that escapes the app answers 500 with OpenAI's error body when
no response has started; the log gets the exception type and frames but not
the message, which could quote a prompt.
"""

from __future__ import annotations

import logging
import time
import traceback

from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.tracing import tracer
from services.gateway.errors import ApiError

logger = logging.getLogger(__name__)

# Label values are bounded: unknown paths count as "other".
KNOWN_ENDPOINTS = frozenset({
    "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/openapi.json", "/docs",
})
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "tandem:http_requests", "HTTP requests answered, by endpoint and status code.", ["endpoint", "status"],
            registry=self.registry)
        self.http_request_duration = Histogram(
            "tandem:http_request_duration_seconds", "HTTP request arrival to last byte, by endpoint.", ["endpoint"],
            buckets=DURATION_BUCKETS, registry=self.registry)


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status: list[int] = []

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        path = scope["path"]
        endpoint = path if path in KNOWN_ENDPOINTS else "other"
        # The request's root span: the router call made while serving it carries its context.
        span = tracer.start_span(f"{scope['method']} {endpoint}", kind=trace.SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, observed_send)
        except Exception as exc:  # noqa: BLE001 -- the last line of defence: answer, log, go on
            frames = "".join(traceback.format_tb(exc.__traceback__))
            logger.error("unhandled %s on %s %s\n%s", type(exc).__name__, scope["method"], scope["path"], frames)
            if not status:
                response = ApiError(500, "internal server error", "server_error", code="internal_error").response()
                await response(scope, receive, observed_send)
        finally:
            # No status at all: the client left before the response started.
            code = str(status[0]) if status else "499"
            span.set_attribute("http.response.status_code", int(code))
            span.end()
            otel_context.detach(token)
            self.metrics.http_requests.labels(endpoint, code).inc()
            self.metrics.http_request_duration.labels(endpoint).observe(time.monotonic() - started)
