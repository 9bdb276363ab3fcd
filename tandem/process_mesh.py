"""``tandem serve --processes``: the mesh of ``tandem serve``, one OS process per service.

Why: every token delta crosses a worker, the router and the gateway; as threads of one
process they share one interpreter lock, which under load on a GPU caps throughput (1000
ShareGPT requests on an H200: 1488 output tok/s in one process, 4989 as processes).

Each service is ``python -m tandem.cli <service>``, started in dependency order (kvstore,
workers, router, gateway). The kvstore and workers listen on ``127.0.0.1:0`` and the
launcher reads their "listening on ADDR" line: no port is picked that another process
could take before the child binds it. A child's exit stops the others (exit 1, naming it);
SIGINT/SIGTERM stop them all (SIGTERM, SIGKILL after a grace period; exit 0).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NoReturn, TextIO

START_TIMEOUT_S = 600.0  # a big checkpoint on a GPU: weights, KV pool, CUDA graph capture
HEALTH_TIMEOUT_S = 30.0  # how long the embedded mesh waits for a decode worker, too
STOP_GRACE_S = 10.0
LISTENING = re.compile(r"listening on (\S+)")
METRICS_LISTENING = re.compile(r"metrics listening on (http://\S+/metrics)")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Fallbacks of flags that only a child has and that ``tandem serve`` cannot spell out as "off": set
# for the launcher they would, say, open a second HTTP port in the router or point the kvstore at
# Redis, which the embedded mesh never does. The API key goes to the gateway alone, by environment
# rather than argv so that ``ps`` does not show it.
CHILD_ONLY_ENV = ("TANDEM_HTTP_PORT", "TANDEM_METRICS_PORT", "TANDEM_REDIS_URL", "TANDEM_REDIS_PREFIX",
                  "TANDEM_KVSTORE_REPLICA_ID", "TANDEM_KVSTORE_LEASE_TTL_MS", "TANDEM_API_KEY")


class ChildExited(Exception):
    """A child died or never became ready; the message names it."""


class Stopping(Exception):
    """SIGINT or SIGTERM reached the launcher."""


@dataclass
class MeshPlan:
    """What ``tandem serve`` was asked for, resolved (flags and their environment fallbacks)."""

    engine_argv: list[str]  # the engine flags as a command line, --model included
    model: str | None
    served_names: list[str]
    colocated: bool
    router_listen: str
    disagg_min_tokens: int
    max_model_len: int | None
    admission_argv: list[str]
    host: str
    port: int
    api_key: str | None
    log_level: str
    kvstore_capacity_bytes: int = 2 << 30  # services/embedded_mesh.py's DEFAULT_KVSTORE_CAPACITY


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    ready: threading.Event = field(default_factory=threading.Event)
    address: str | None = None
    reader: threading.Thread | None = None
    metrics_url: str | None = None  # its Prometheus endpoint, when started with --metrics-port
    metrics_ready: threading.Event = field(default_factory=threading.Event)

    def exit_text(self) -> str:
        code = self.proc.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ONLY_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the launcher as they are written
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn arming PR_SET_PDEATHSIG=SIGTERM in the child (Linux; elsewhere None, and a
    SIGKILLed launcher leaves its children running).

    A SIGKILLed launcher runs no cleanup, so only the kernel can stop its children (a
    process group only helps whoever signals the group). SIGTERM, not SIGKILL, so the
    kvstore still unlinks its shared memory. It fires when the *thread* that forked
    exits: start children from the main thread. preexec_fn is risky with threads
    because the child may need a lock another thread held at fork; ``prctl`` is looked
    up before the fork, so the child only makes one foreign call and a getppid().
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    launcher, sigterm = os.getpid(), int(signal.SIGTERM)

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != launcher:  # the launcher died between fork and prctl
            os._exit(1)

    return arm


class Children:
    """Child processes started in order, their output forwarded, stopped in reverse order."""

    def __init__(self, env: dict[str, str] | None = None, log: TextIO | None = None) -> None:
        self.env = child_env() if env is None else env
        self.log = log or sys.stderr
        self.stopping = threading.Event()  # set by the signal handlers
        self.children: list[Child] = []
        self._log_lock = threading.Lock()

    def start(self, name: str, argv: list[str], timeout: float = START_TIMEOUT_S,
              extra_env: dict[str, str] | None = None, metrics: bool = False) -> str:
        """Run ``argv`` and return the address of its "listening on" line; raises ChildExited.

        ``metrics``: also wait for its "metrics listening on" line (``Child.metrics_url``).
        """
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            encoding="utf-8", errors="replace", env={**self.env, **(extra_env or {})},
            # Its own process group: a terminal's Ctrl-C reaches the launcher alone, which stops the
            # children in order instead of racing them (and reporting their exit as a crash).
            process_group=0, preexec_fn=_die_with_parent(),  # noqa: PLW1509 (see _die_with_parent)
        )
        child = Child(name, proc)
        self.children.append(child)
        child.reader = threading.Thread(target=self._pump, args=(child,), name=f"{name}-output", daemon=True)
        child.reader.start()
        deadline = time.monotonic() + timeout
        for printed in (child.ready, child.metrics_ready) if metrics else (child.ready,):
            while not printed.wait(0.1):
                self.check()
                if time.monotonic() > deadline:
                    raise ChildExited(f"{name} (pid {proc.pid}) printed no 'listening on' line within {timeout:g} s")
        assert child.address is not None
        return child.address

    def _pump(self, child: Child) -> None:
        assert child.proc.stdout is not None
        for line in child.proc.stdout:
            line = line.rstrip("\n")
            metrics = METRICS_LISTENING.search(line)
            if metrics:
                child.metrics_url = metrics.group(1)
                child.metrics_ready.set()
                continue
            match = None if child.ready.is_set() else LISTENING.search(line)
            if match:
                # Not forwarded: the launcher reports readiness itself, and whoever waits for
                # "listening on" must see its lines (router, HTTP API), not a child's.
                child.address = match.group(1)
                child.ready.set()
                continue
            self.note(f"[{child.name}] {line}")

    def note(self, text: str) -> None:
        with self._log_lock:
            try:
                print(text, file=self.log, flush=True)
            except (OSError, ValueError):
                pass  # a closed stderr must not stop the draining, or the child blocks on a full pipe

    def check(self) -> None:
        """Raise Stopping after a signal, ChildExited when any child has exited."""
        if self.stopping.is_set():
            raise Stopping
        for child in self.children:
            if child.proc.poll() is not None:
                if child.reader is not None:
                    child.reader.join(2)  # its last lines (a traceback, say) before the verdict
                raise ChildExited(f"{child.name} (pid {child.proc.pid}) {child.exit_text()}")

    def wait(self, poll_s: float = 0.2) -> NoReturn:
        """Until a signal (Stopping) or a child's exit (ChildExited)."""
        while True:
            self.check()
            self.stopping.wait(poll_s)

    def stop_all(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM each live child, last started first; SIGKILL one that outlives ``grace``."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.terminate()
                try:
                    child.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        for child in self.children:
            if child.reader is not None:
                child.reader.join(2)


@contextmanager
def _stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    # The handler only sets the event: the main thread notices it between waits.
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cli(plan: MeshPlan, command: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "tandem.cli", "--log-level", plan.log_level, command, *flags]


def _wait_healthy(children: Children, url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether the gateway's /health said 200 (a decode worker answers the router) within ``timeout``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children.check()
        try:
            with opener.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):  # 503 until the router sees a worker
            pass
        children.stopping.wait(0.2)
    return False


def _start_mesh(children: Children, plan: MeshPlan) -> None:
    model = ["--model", plan.model] if plan.model else []
    names = [flag for name in plan.served_names for flag in ("--served-model-name", name)]
    kvstore = children.start("kvstore", [
        sys.executable, "-m", "tandem.cli", "kvstore", "--listen", "127.0.0.1:0",
        "--capacity-bytes", str(plan.kvstore_capacity_bytes), "--log-level", plan.log_level, "--metrics-port", "0",
    ], metrics=True)
    children.note(f"tandem serve: kvstore ready at {kvstore}")
    # As services/embedded_mesh.py, one after the other: a worker sizes its KV pool from the memory
    # free when it starts, and two measuring at once would both count the same memory.
    workers = [("worker", ["--role", "both"], "worker-0")] if plan.colocated else [
        ("prefill", [], "prefill-0"), ("decode", [], "decode-0")]
    for command, role, worker_id in workers:
        address = children.start(command, _cli(
            plan, command, *plan.engine_argv, "--kvstore", kvstore, "--listen", "127.0.0.1:0",
            "--worker-id", worker_id, "--served-model-name", plan.served_names[0], "--kv-transport", "auto", *role,
            "--metrics-port", "0"), metrics=True)
        children.note(f"tandem serve: {worker_id} ready at {address}")
    # One worker in both roles already holds every prompt's KV: a prefill hop would only copy it.
    disagg = sys.maxsize if plan.colocated else plan.disagg_min_tokens
    max_len = ["--max-model-len", str(plan.max_model_len)] if plan.max_model_len else []
    router = children.start("router", _cli(
        plan, "router", *model, "--kvstore", kvstore, "--listen", plan.router_listen, *names, *max_len,
        "--disagg-min-tokens", str(disagg), *plan.admission_argv, "--metrics-port", "0"), metrics=True)
    print(f"tandem router listening on {router}", flush=True)
    # The gateway's /metrics merges every other child's, as the embedded mesh's does.
    metrics_from = [flag for c in children.children if c.metrics_url for flag in ("--metrics-from", c.metrics_url)]
    url = children.start("gateway", _cli(
        plan, "gateway", "--router", router, *model, "--host", plan.host, "--port", str(plan.port), *names,
        *metrics_from),
        extra_env={"TANDEM_API_KEY": plan.api_key} if plan.api_key else None)
    if not _wait_healthy(children, url):
        children.note(f"tandem serve: no decode worker healthy after {HEALTH_TIMEOUT_S:g} s; serving anyway")
    print(f"tandem HTTP API listening on {url}", flush=True)


def serve_processes(plan: MeshPlan) -> int:
    """Run the mesh until SIGINT/SIGTERM (exit 0) or until a child exits (exit 1). Main thread only."""
    children = Children()
    with _stop_on_signals(children.stopping):
        try:
            _start_mesh(children, plan)
            children.wait()
        except Stopping:
            return 0
        except ChildExited as exc:
            children.note(f"tandem serve: {exc}; stopping the other services")
            return 1
        finally:
            children.stop_all()
