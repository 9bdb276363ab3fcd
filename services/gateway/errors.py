"""Every failure as OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``.

The router's gRPC status codes map to HTTP statuses (INVALID_ARGUMENT 400,
NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...), its retry-after
hint to a ``Retry-After`` header; FastAPI's validation errors become 400s that
name the offending parameter. (A bug's 500 is answered by the outermost
middleware, ``middleware.py``.)
"""

from __future__ import annotations

import math

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.responses import ErrorBody, ErrorResponse
from tandem.client_types import TandemRpcError

# gRPC status -> (HTTP status, OpenAI error type, error code)
_RPC_STATUS: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    # A request the router stopped on someone's Abort: the mesh would not serve it.
    grpc.StatusCode.CANCELLED: (503, "server_error", "cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
}
# Anything else means the router itself failed.
_UPSTREAM_FAILURE = (502, "server_error", "bad_gateway")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


def model_not_found(model: str, served: list[str]) -> ApiError:
    return ApiError(404, f"the model {model!r} does not exist; this server serves {served}",
                    "invalid_request_error", "model", "model_not_found")


def from_rpc(error: TandemRpcError) -> ApiError:
    status, type_, code = _RPC_STATUS.get(error.code, _UPSTREAM_FAILURE)
    message = error.message or error.code.name.lower()
    if status == 502:
        message = f"the router failed ({error.code.name}): {message}"
    retry = error.retry_after_s
    if retry is None and status in (429, 503):
        retry = 1.0  # a refusal for load always says when to come back
    return ApiError(status, message, type_, None, code, retry)


# Labels pydantic puts in an error's location for the branch of a union it tried.
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param(loc: tuple) -> str | None:
    """``("body", "messages", 0, "content", "str")`` -> ``"messages[0].content"``."""
    text = ""
    for part in loc:
        if part == "body" and not text:
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in _TYPE_LABELS or not str(part).isidentifier():
            continue  # a union branch label, not a parameter name
        else:
            text += f".{part}" if text else str(part)
    return text or None


def validation_error(exc: RequestValidationError) -> ApiError:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return bad_request("the request body is not valid JSON")
    # A value that failed a union (a prompt is text, texts, ids or id lists) fails every
    # branch; a broken constraint ("must be >= 0") says more than a wrong-type branch.
    errors.sort(key=lambda e: str(e.get("type", "")).endswith("_type"))
    problems: list[str] = []
    for error in errors:
        where = _param(tuple(error.get("loc", ())))
        problem = f"{where}: {error.get('msg', 'invalid value')}" if where else str(error.get("msg", "invalid value"))
        if problem not in problems:
            problems.append(problem)
    message = "; ".join(problems[:3]) or "invalid request"
    if len(problems) > 3:
        message += f" (and {len(problems) - 3} more)"
    param = _param(tuple(errors[0].get("loc", ()))) if errors else None
    return bad_request(message, param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error = ApiError(exc.status_code, str(exc.detail), type_)
        response = error.response()
        response.headers.update(exc.headers or {})
        return response
