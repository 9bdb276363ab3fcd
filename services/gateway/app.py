"""The FastAPI application: OpenAI's endpoints over a router's Generate stream.

    POST /v1/completions, POST /v1/chat/completions, GET /v1/models   (Bearer key when one is set)
    GET /health    200 only while the router can serve (it has a healthy decode worker)
    GET /metrics   Prometheus text: the gateway's HTTP counters plus any registries handed in
                   (the router's, when the router runs in this process)
    GET /openapi.json
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from services.gateway.chat import ChatRun
from services.gateway.completions import CompletionRun
from services.gateway.context import GatewayContext, now_s
from services.gateway.errors import ApiError, from_rpc, install_error_handlers
from services.gateway.middleware import GatewayMetrics, RequestObserver
from services.gateway.openapi_docs import GENERATE_RESPONSES, PUBLIC_RESPONSES, drop_unused_422
from services.gateway.protocol import ChatCompletionRequest, CompletionRequest
from services.gateway.responses import (
    ChatCompletionResponse,
    CompletionResponse,
    HealthStatus,
    ModelCard,
    ModelList,
)
from services.gateway.sse import SSE_MEDIA_TYPE
from services.gateway.warmup import warm_up
from tandem.client import AsyncTandemClient
from tandem.client_types import TandemRpcError

_bearer = HTTPBearer(auto_error=False, description="The server's --api-key, when it has one.")


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


async def _run(run: CompletionRun | ChatRun, request: Request, stream: bool) -> Response:
    """Start the router calls (errors become HTTP statuses), then answer whole or as a stream."""
    watcher = asyncio.create_task(run.generation.cancel_on_disconnect(request))
    try:
        await run.generation.start()
    except BaseException:
        watcher.cancel()
        raise
    if not stream:
        try:
            return _json(await run.collect())
        finally:
            watcher.cancel()

    async def body() -> AsyncIterator[str]:
        try:
            async for event in run.stream():
                yield event
        finally:
            watcher.cancel()
            run.generation.cancel()

    return StreamingResponse(body(), media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache"})


def build_app(router_address: str, tokenizer: PreTrainedTokenizerBase, served_model_names: Sequence[str],
              api_key: str | None = None, extra_registries: Sequence[CollectorRegistry] = ()) -> FastAPI:
    metrics = GatewayMetrics()
    registries = [metrics.registry, *extra_registries]
    holder: dict[str, GatewayContext] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A grpc.aio channel belongs to the event loop that made it: uvicorn's.
        client = AsyncTandemClient(router_address)
        holder["ctx"] = GatewayContext(client, tokenizer, list(served_model_names), api_key)
        await warm_up(app, client)
        try:
            yield
        finally:
            await client.close()

    def context() -> GatewayContext:
        return holder["ctx"]

    async def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "missing or invalid API key (send it as 'Authorization: Bearer KEY')",
                           "authentication_error", code="invalid_api_key")

    app = FastAPI(title="tandem", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API of a tandem mesh.")
    install_error_handlers(app)
    app.add_middleware(RequestObserver, metrics=metrics)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.post("/completions", response_model=CompletionResponse, responses=GENERATE_RESPONSES)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        ctx = context()
        run = CompletionRun(ctx, body, ctx.resolve_model(body.model))
        return await _run(run, request, body.stream)

    @v1.post("/chat/completions", response_model=ChatCompletionResponse, responses=GENERATE_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        ctx = context()
        run = ChatRun(ctx, body, ctx.resolve_model(body.model))
        return await _run(run, request, body.stream)

    @v1.get("/models", response_model=ModelList, responses=PUBLIC_RESPONSES)
    async def models() -> Response:
        ctx = context()
        try:
            cards = await ctx.client.list_models()
        except TandemRpcError as exc:
            raise from_rpc(exc) from None
        max_len = cards[0].max_model_len if cards else None
        root = ctx.served_model_names[0]
        created = now_s()
        data = [ModelCard(id=name, created=created, root=root, max_model_len=max_len)
                for name in ctx.served_model_names]
        return _json(ModelList(data=data))

    app.include_router(v1)

    @app.get("/health", response_model=HealthStatus, responses={503: PUBLIC_RESPONSES[503]})
    async def health() -> Response:
        if not await context().client.health(timeout=2.0):
            raise ApiError(503, "the mesh cannot serve: the router is unreachable or has no healthy decode "
                           "worker", "server_error", code="service_unavailable", retry_after_s=1.0)
        return _json(HealthStatus())

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        text = b"".join(generate_latest(registry) for registry in registries)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    drop_unused_422(app)
    return app

