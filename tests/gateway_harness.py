"""Fixtures of the gateway tests: a real ``tandem serve`` of the tiny Llama, shared by the session.

The server runs as a subprocess exactly as a user starts it (``python -m
tandem.cli serve``), with an API key and an alias, on ports the OS picks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.mesh_harness import ServiceProcess, start_service

API_KEY = "sk-tandem-test"
MODEL = "tiny-llama"
ALIAS = "tiny-llama-alias"
MAX_MODEL_LEN = 256
ENGINE_FLAGS = ["--dtype", "float32", "--num-kv-blocks", "512", "--max-model-len", str(MAX_MODEL_LEN)]
HTTP_LINE = re.compile(r"HTTP API listening on (\S+)")
METRICS_LINE = re.compile(r"metrics listening on (http://\S+)/metrics")


def wait_for_line(process: ServiceProcess, pattern: re.Pattern, timeout: float = 60.0) -> str:
    """The first group of the first log line matching ``pattern`` (the process prints it when ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(process.lines):
            match = pattern.search(line)
            if match:
                return match.group(1)
        if process.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{process.name}: no line matching {pattern.pattern}:\n{''.join(process.lines)[-4000:]}")


@dataclass
class Served:
    process: ServiceProcess
    url: str  # http://host:port of the OpenAI API
    grpc_address: str  # the router
    checkpoint: Path

    def openai(self, api_key: str = API_KEY, **kwargs) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)

    def post(self, path: str, body: dict | str, api_key: str | None = API_KEY, timeout: float = 60) -> httpx.Response:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if isinstance(body, str):
            headers["Content-Type"] = "application/json"
            return httpx.post(self.url + path, content=body, headers=headers, timeout=timeout)
        return httpx.post(self.url + path, json=body, headers=headers, timeout=timeout)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def start_serve(name: str, args: list[str], log_dir: Path) -> tuple[ServiceProcess, str]:
    """``tandem serve ARGS`` on free ports; returns the process and its HTTP URL."""
    process = start_service(name, ["serve", "--listen", "127.0.0.1:0", "--port", "0", *args], log_dir)
    try:
        return process, wait_for_line(process, HTTP_LINE, timeout=120)
    except BaseException:
        process.stop()
        raise


@pytest.fixture(scope="session")
def served(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    checkpoint = tiny_checkpoints["llama"]
    logs = tmp_path_factory.mktemp("gateway-logs")
    process, url = start_serve("serve-tiny", [
        "--model", str(checkpoint), *ENGINE_FLAGS, "--api-key", API_KEY,
        "--served-model-name", MODEL, "--served-model-name", ALIAS,
    ], logs)
    try:
        yield Served(process, url, process.address, checkpoint)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def client(served: Served) -> OpenAI:
    """The official OpenAI client, pointed at the served mesh."""
    return served.openai()
