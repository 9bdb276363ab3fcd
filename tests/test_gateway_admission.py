"""429 from admission control and 503 without a worker, through `tandem gateway` in front of `tandem router`.

The mesh runs as separate processes: kvstore, one worker in both roles that
runs one sequence at a time, a router admitting one queued request and
serving its metrics on --metrics-port, and the standalone gateway. While a
long request runs, a second one waits for the worker without a first token
(queued); a third finds the queue full.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import openai
import pytest

from tandem import SamplingParams
from tandem.client import TandemClient, TandemRpcError
from tests.gateway_harness import HTTP_LINE, METRICS_LINE, parse_metrics, wait_for_line
from tests.mesh_harness import ServiceProcess, start_service, wait_until

pytestmark = pytest.mark.timeout(300)
ENGINE_FLAGS = ["--dtype", "float32", "--num-kv-blocks", "256", "--max-model-len", "512", "--max-num-seqs", "1"]
LONG = {"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True}


@dataclass
class Mesh:
    procs: dict[str, ServiceProcess]
    url: str  # the gateway
    router_metrics_url: str

    def router_metrics(self) -> dict:
        return parse_metrics(httpx.get(self.router_metrics_url + "/metrics", timeout=10).text)

    def post(self, body: dict, timeout: float = 120) -> httpx.Response:
        return httpx.post(self.url + "/v1/completions", json=body, timeout=timeout)


@pytest.fixture(scope="module")
def mesh(tiny_checkpoints, tmp_path_factory) -> Iterator[Mesh]:
    ckpt = str(tiny_checkpoints["llama"])
    logs = tmp_path_factory.mktemp("admission-logs")
    procs: dict[str, ServiceProcess] = {}
    try:
        procs["kvstore"] = start_service("kvstore", ["kvstore", "--listen", "127.0.0.1:0"], logs)
        kv = procs["kvstore"].address
        procs["worker"] = start_service("worker", ["worker", "--role", "both", "--model", ckpt, "--kvstore", kv,
                                                   "--listen", "127.0.0.1:0", *ENGINE_FLAGS], logs)
        procs["router"] = start_service("router", [
            "router", "--model", ckpt, "--kvstore", kv, "--listen", "127.0.0.1:0", "--max-model-len", "512",
            "--metrics-port", "0", "--max-queued-requests", "1", "--max-queued-prompt-tokens", "4096",
        ], logs)
        metrics_url = wait_for_line(procs["router"], METRICS_LINE)
        procs["gateway"] = start_service("gateway", ["gateway", "--router", procs["router"].address,
                                                     "--model", ckpt, "--port", "0"], logs)
        url = wait_for_line(procs["gateway"], HTTP_LINE)
        assert wait_until(lambda: httpx.get(url + "/health", timeout=5).status_code == 200, timeout=60)
        yield Mesh(procs, url, metrics_url)
    finally:
        for proc in procs.values():
            proc.stop()


def test_a_full_queue_answers_429_with_retry_after(mesh, tiny_checkpoints):
    waiting = ("tandem:num_requests_waiting", ())
    with httpx.stream("POST", mesh.url + "/v1/completions", json={**LONG, "stream": True}, timeout=120) as long:
        lines = long.iter_lines()  # kept: dropping the iterator would close the connection
        next(lines)  # the long request runs: it holds the worker's only sequence slot
        queued: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: queued.append(mesh.post({"prompt": "Hello", "max_tokens": 2})))
        thread.start()
        assert wait_until(lambda: mesh.router_metrics()[waiting] == 1, timeout=20, interval=0.05)

        refused = mesh.post({"prompt": "Hello again", "max_tokens": 2})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=mesh.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
                model=str(tiny_checkpoints["llama"]), messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        with TandemClient(mesh.procs["router"].address) as client, pytest.raises(TandemRpcError) as info:
            client.complete("Hello", SamplingParams(max_tokens=2))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.retry_after_s >= 1
    # Dropping the long stream frees the worker: the queued request is served.
    thread.join(60)
    assert queued and queued[0].status_code == 200
    metrics = mesh.router_metrics()
    assert metrics[("tandem:admission_rejections_total", (("reason", "queued_requests"),))] >= 3
    assert wait_until(lambda: mesh.router_metrics()[waiting] == 0, timeout=10)


def test_no_worker_answers_503_and_health_fails(mesh):
    mesh.procs["worker"].kill()
    assert wait_until(lambda: httpx.get(mesh.url + "/health", timeout=5).status_code == 503, timeout=20)
    response = mesh.post({"prompt": "Hello", "max_tokens": 2})
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "service_unavailable"
    metrics = mesh.router_metrics()
    assert metrics[("tandem:num_healthy_workers", (("role", "decode"),))] == 0
