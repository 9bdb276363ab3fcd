"""Server-sent events in OpenAI's framing: ``data: <json>\\n\\n`` per chunk, ``data: [DONE]`` last."""

from __future__ import annotations

from pydantic import BaseModel

from services.gateway.errors import ApiError

SSE_MEDIA_TYPE = "text/event-stream"


def sse_event(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def sse_error(exc: Exception) -> str:
    """An error that happened after the stream started (the status line was already 200)."""
    if not isinstance(exc, ApiError):
        exc = ApiError(502, f"the stream failed: {type(exc).__name__}", "server_error", code="bad_gateway")
    return f"data: {exc.body.model_dump_json()}\n\n"


def sse_done() -> str:
    return "data: [DONE]\n\n"
