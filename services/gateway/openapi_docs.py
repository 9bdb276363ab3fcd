"""What /openapi.json says each endpoint can answer besides its 200 body.

The error statuses are the ones the gateway produces (see ``errors.py``);
FastAPI's automatic 422 is removed because validation errors answer 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.gateway.responses import ErrorResponse

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry:
        doc["headers"] = _RETRY_AFTER
    return doc


PUBLIC_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or wrong API key."),
    502: _error("The router failed."),
    503: _error("The mesh cannot serve now (no router or no healthy decode worker).", retry=True),
}

GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion, or with stream=true server-sent events ending with 'data: [DONE]'.",
        # Before OpenAPI 3.2's itemSchema, an event stream's schema describes one event.
        "content": {"text/event-stream": {"schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"type": "string", "description": "A JSON chunk (object 'text_completion' or "
                         "'chat.completion.chunk'), an error object, or [DONE] last."},
                "event": {"type": "string"},
            },
        }}},
    },
    400: _error("A parameter is invalid, or the prompt plus max_tokens exceeds the context."),
    404: _error("Unknown model name."),
    409: _error("A request with the same id is in flight."),
    429: _error("Admission control refused the request: the mesh is busy.", retry=True),
    504: _error("The router did not answer in time."),
    **PUBLIC_RESPONSES,
}


def drop_unused_422(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
