"""Starting tandem services as real OS processes for mesh tests, and talking to them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


from services.common.convert import sampling_to_proto
from services.common.grpc_server import channel
from services.engine.sampling_params import SamplingParams
from tandem._proto.tandem.v1 import common_pb2, kvstore_pb2, kvstore_pb2_grpc, router_pb2, router_pb2_grpc
from tandem._proto.tandem.v1 import worker_pb2_grpc

LISTENING = re.compile(r"listening on (\S+:\d+)")
START_TIMEOUT_S = 120


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen
    address: str
    log: Path
    lines: list[str] = field(default_factory=list)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1"})
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_service(name: str, args: list[str], log_dir: Path, expect_failure: bool = False,
                  env: dict[str, str] | None = None) -> ServiceProcess:
    """Run ``python -m tandem.cli ARGS`` (``env`` added to its environment) and wait for its "listening on" line."""
    log = log_dir / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**service_env(), **(env or {})},
    )
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        with log.open("w") as out:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.append(line)
                out.write(line)
                out.flush()
                match = LISTENING.search(line)
                if match and not found:
                    found.append(match.group(1))
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(START_TIMEOUT_S)
    if expect_failure:
        proc.wait(START_TIMEOUT_S)
        return ServiceProcess(name, proc, "", log, lines)
    if not found:
        proc.kill()
        raise RuntimeError(f"{name} did not start:\n{''.join(lines)[-4000:]}")
    return ServiceProcess(name, proc, found[0], log, lines)


class MeshClient:
    def __init__(self, router_address: str, kvstore_address: str) -> None:
        self.router = router_pb2_grpc.RouterStub(channel(router_address))
        self.kvstore = kvstore_pb2_grpc.KvStoreStub(channel(kvstore_address))

    def stream(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "", timeout: float = 120):
        request = router_pb2.GenerateRequest(
            request_id=request_id, token_ids=router_pb2.TokenIds(ids=prompt_ids), sampling=sampling_to_proto(params)
        )
        return self.router.Generate(request, timeout=timeout)

    def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "") -> dict[int, list[int]]:
        """Token ids per sample index."""
        tokens: dict[int, list[int]] = {}
        for response in self.stream(prompt_ids, params, request_id):
            tokens.setdefault(response.index, []).extend(response.delta.token_ids)
        return tokens

    def stats(self) -> kvstore_pb2.StatsResponse:
        return self.kvstore.Stats(kvstore_pb2.StatsRequest(), timeout=10)


def worker_load(address: str, role: str) -> common_pb2.WorkerLoad:
    chan = channel(address)
    stub = worker_pb2_grpc.PrefillWorkerStub(chan) if role == "prefill" else worker_pb2_grpc.DecodeWorkerStub(chan)
    return stub.GetLoad(common_pb2.LoadRequest(), timeout=10)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def drain(stream: Iterator) -> None:
    for _ in stream:
        pass
