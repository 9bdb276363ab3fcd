"""OpenTelemetry traces that follow one request across every gRPC hop of the mesh.

Every tandem gRPC server runs :class:`ServerTracing`: each call becomes a
SERVER span named after its method, a child of whatever trace context the
caller sent in the call's metadata (W3C ``traceparent``). Every channel a
service dials goes through :func:`traced_channel` (or, on asyncio, carries
:func:`aio_client_interceptors`), which puts the current context into that
metadata. So gateway -> router -> prefill worker -> kvstore -> decode worker
spans share one trace id, each under the span that called it. A thread that
works for a request (a sample of ``n``, a block upload) starts with the
request's context through :func:`in_context`.

Spans carry ids, counts and status codes, never prompt or output text.

Nothing is exported unless configured (:func:`configure_tracing`): without an
SDK tracer provider the OpenTelemetry API's spans are no-ops, so an
unconfigured process pays almost nothing.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

logger = logging.getLogger(__name__)

tracer = trace.get_tracer("tandem")


# -- context in and out of gRPC metadata ---------------------------------------------


def _context_headers() -> dict[str, str]:
    """The current trace context as metadata entries (W3C ``traceparent``, ...)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _metadata_with_context(metadata: Any) -> list[tuple[str, str]]:
    return [*(metadata or ()), *_context_headers().items()]


def _context_from_metadata(metadata: Any) -> otel_context.Context:
    return propagate.extract({key: value for key, value in metadata or () if isinstance(value, str)})


def in_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run in a copy of the calling thread's context (its trace included), wherever it runs."""
    ctx = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> Any:
        return ctx.run(fn, *args, **kwargs)

    return run


# -- servers ---------------------------------------------------------------------------


class ServerTracing(grpc.ServerInterceptor):
    """A SERVER span around every call, parented on the caller's propagated context."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        name = handler_call_details.method.lstrip("/")
        parent = _context_from_metadata(handler_call_details.invocation_metadata)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, name, parent), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, name, parent), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, name, parent), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, name, parent), handler.request_deserializer,
            handler.response_serializer)


def _unary(behavior: Callable, name: str, parent: otel_context.Context) -> Callable:
    def traced(request: Any, context: grpc.ServicerContext) -> Any:
        with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER):
            return behavior(request, context)

    return traced


def _streaming(behavior: Callable, name: str, parent: otel_context.Context) -> Callable:
    def traced(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # The span lasts as long as the response stream; gRPC drives the
        # generator from one thread, so the context is current between yields.
        with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER) as span:
            count = 0
            for response in behavior(request, context):
                count += 1
                yield response
            span.set_attribute("tandem.responses", count)

    return traced


# -- clients -------------------------------------------------------------------------


class _ClientDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class ClientTracing(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Puts the current trace context into every outgoing call's metadata."""

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _ClientDetails(details, _metadata_with_context(details.metadata))

    def intercept_unary_unary(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: grpc.ClientCallDetails,
                               request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable, details: grpc.ClientCallDetails,
                                request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with the current trace context sent on every call."""
    return grpc.intercept_channel(channel, ClientTracing())


# grpc.aio files each interceptor under the first call type it implements, so
# one class per type.
class _AioUnaryUnaryTracing(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


class _AioUnaryStreamTracing(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


def _aio_details(details: Any) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in _context_headers().items():
        metadata.add(key, value)
    return details._replace(metadata=metadata)


def aio_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a ``grpc.aio`` channel that send the current trace context."""
    return [_AioUnaryUnaryTracing(), _AioUnaryStreamTracing()]


# -- export ----------------------------------------------------------------------------


def configure_tracing(service_name: str) -> bool:
    """Install an SDK tracer provider for this process if an exporter is asked for; returns whether.

    ``TANDEM_TRACE_EXPORTER``: ``otlp`` (to ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    needs ``opentelemetry-exporter-otlp``), ``console`` (one JSON span per line
    on stderr), or unset / ``none`` (spans are no-ops).
    """
    exporter_name = os.environ.get("TANDEM_TRACE_EXPORTER", "none").lower()
    if exporter_name in ("", "none"):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ValueError("TANDEM_TRACE_EXPORTER=otlp needs the opentelemetry-exporter-otlp package") from exc
        exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"TANDEM_TRACE_EXPORTER must be otlp, console or none, got {exporter_name!r}")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info("tracing: exporting spans of %s to %s", service_name, exporter_name)
    return True


def annotate(**attributes: str | float | bool) -> None:
    """Set ``tandem.<name>`` attributes on the current span (ids and counts only, never text)."""
    trace.get_current_span().set_attributes({f"tandem.{name}": value for name, value in attributes.items()})
