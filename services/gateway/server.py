"""Serving the gateway app with uvicorn on a background thread (the main thread waits for signals).

The listening socket is bound here, before uvicorn starts, so port 0 works
(the OS picks a free port) and the caller learns the real address at once.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from transformers import PreTrainedTokenizerBase

from services.engine.models.checkpoint import load_model_metadata
from services.engine.models.default_model import default_model_path
from services.engine.tokenizer import load_tokenizer

START_TIMEOUT_S = 30.0


def load_gateway_tokenizer(model: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer of the model the router serves (token strings for logprobs, echo of token ids)."""
    return load_tokenizer(load_model_metadata(model or default_model_path()).tokenizer_source)


def bind_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app: FastAPI) -> uvicorn.Server:
    # log_config=None keeps tandem's logging setup; access logs would only repeat the metrics.
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=3,
                            timeout_keep_alive=30)
    return uvicorn.Server(config)


@dataclass
class RunningGateway:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_gateway_thread(app: FastAPI, host: str, port: int) -> RunningGateway:
    """Serve ``app`` on a daemon thread; returns once it accepts connections."""
    sock = bind_socket(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tandem-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP server on {host}:{port} did not start")
        time.sleep(0.02)
    return RunningGateway(server, thread, url_of(sock))

