"""Work the gateway would otherwise do on its first request, done while it starts.

FastAPI builds the state of the routes of an included router (request
models, dependencies, response fields) when the first request is matched
against them, anyio loads its asyncio backend on the first streamed response,
and the router channel connects on the first call. On a 2-core CPU that made
the first completion ~0.25 s slower than the next ones. ``warm_up`` sends one
empty body to each generating endpoint in-process, below the metrics
middleware: it fails validation (or authorization) before reaching the
router, nothing is counted, and nothing is generated.
"""

from __future__ import annotations

import logging

import anyio
from fastapi import FastAPI
from starlette.types import Message

from tandem.client import AsyncTandemClient

logger = logging.getLogger(__name__)

WARM_UP_PATHS = ("/v1/completions", "/v1/chat/completions")


async def _post_empty(app: FastAPI, path: str) -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "app": app,
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        pass

    try:
        await app.router(scope, receive, send)
    except Exception:  # noqa: BLE001, S110 -- the error the empty body was sent to provoke
        pass


async def warm_up(app: FastAPI, client: AsyncTandemClient) -> None:
    try:
        for path in WARM_UP_PATHS:
            await _post_empty(app, path)
        async with anyio.create_task_group():
            pass
        await client.health(timeout=2.0)
    except Exception as exc:  # noqa: BLE001 -- a warm-up that fails costs the first request its time, no more
        logger.debug("gateway warm-up failed: %s", type(exc).__name__)
