"""A real Redis for the tests.

``redis_url`` (session) is the Redis on 127.0.0.1:6379 when it answers a
PING, else a ``redis-server`` from PATH started on a free port (no
persistence) for the session, else the tests fail saying how to get one.
``redis_prefix`` gives each test its own key prefix and deletes its keys after.
Import both fixtures into a test module to use them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 6379


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(host=DEFAULT_HOST, port=port, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((DEFAULT_HOST, 0))
        return sock.getsockname()[1]


def _start_redis_server() -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "no Redis answers on 127.0.0.1:6379 and redis-server is not on PATH; "
            "install it (apt-get install redis-server) or run bash scripts/test.sh, which does"
        )
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--bind", DEFAULT_HOST, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return process, port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if _answers(DEFAULT_PORT):
        yield f"redis://{DEFAULT_HOST}:{DEFAULT_PORT}/0"
        return
    process, port = _start_redis_server()
    try:
        yield f"redis://{DEFAULT_HOST}:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test (or run) uses; its keys are deleted after the test."""
    prefix = f"tandem-test:{{{uuid.uuid4().hex}}}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
