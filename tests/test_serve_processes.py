"""``tandem serve --processes``: one child process per service, and every way it can end.

The end-to-end tests run the real command on the tiny Llama; the launcher's
own failure paths (a child that never gets ready, one that ignores SIGTERM, a
SIGKILLed launcher) use stand-in children, which take a second instead of a
model load. Leftover processes are found by a marker in their environment,
which every child inherits from the launcher.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tandem import LLM, SamplingParams
from tandem.process_mesh import ChildExited, Children
from tests.fixtures.hf_oracle import hf_greedy
from tests.gateway_harness import API_KEY, ENGINE_FLAGS, MAX_MODEL_LEN, MODEL, parse_metrics, start_serve
from tests.mesh_harness import service_env, start_service, wait_until

pytestmark = pytest.mark.timeout(180)
MARK = "TANDEM_TEST_PROCESS_MESH_MARK"
PROMPT_IDS = [5, 17, 123, 42, 8, 301, 77, 9, 250, 64]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait() is missing


def marked(marker: str, exclude: int | None = None) -> list[int]:
    """Live processes whose environment carries ``marker`` (a zombie's environ reads empty)."""
    needle = f"{MARK}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            if needle in Path(f"/proc/{entry}/environ").read_bytes() and _alive(int(entry)):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch) -> str:
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK, value)  # service_env() copies os.environ into the launcher's environment
    return value


def _serve_flags(checkpoint: Path, *extra: str) -> list[str]:
    return ["--processes", "--model", str(checkpoint), *ENGINE_FLAGS, "--api-key", API_KEY,
            "--served-model-name", MODEL, *extra]


def _greedy_over_http(url: str, checkpoint: Path) -> None:
    """/v1/completions equals the offline engine, whose tokens equal HF's."""
    body = {"model": MODEL, "prompt": PROMPT_IDS, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    llm = LLM(model=str(checkpoint), dtype="float32", num_kv_blocks=64, max_model_len=MAX_MODEL_LEN)
    want = llm.generate([PROMPT_IDS], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0]
    assert want.token_ids == hf_greedy(checkpoint, [PROMPT_IDS], 8)[0]
    assert response.json()["choices"][0]["text"] == want.text
    assert response.json()["usage"]["completion_tokens"] == 8


@pytest.mark.slow
def test_colocated_processes_answer_greedy_and_stop_on_sigterm(tiny_llama, marker, tmp_path):
    process, url = start_serve("serve-processes", _serve_flags(tiny_llama, "--colocated"), tmp_path)
    try:
        launcher = process.proc.pid
        children = marked(marker, exclude=launcher)
        commands = sorted(re.search(r"tandem\.cli (?:--log-level \S+ )?(\S+)", cmdline(p)).group(1) for p in children)
        assert commands == ["gateway", "kvstore", "router", "worker"]  # colocated: one worker, --role both
        assert any("--role both" in cmdline(p) for p in children)
        # One engine does both: the router never hands a prompt to a prefill hop.
        assert any(f"--disagg-min-tokens {sys.maxsize}" in cmdline(p) for p in children)
        assert all(API_KEY not in cmdline(p) for p in children)  # the key travels by environment
        _greedy_over_http(url, tiny_llama)
        # The gateway's /metrics merges every other process's: router, worker and kvstore.
        samples = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
        assert samples[("tandem:generation_tokens_total", ())] >= 8
        assert samples[("tandem:worker_num_total_kv_blocks", (("worker_id", "worker-0"),))] == 512
        assert any(name == "tandem:kvstore_capacity_bytes" for name, _ in samples)
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(30) == 0
        assert wait_until(lambda: not marked(marker), timeout=5), [cmdline(p) for p in marked(marker)]
    finally:
        process.stop()
    output = "".join(process.lines)
    # The launcher's lines, in serve's order, and no child's readiness line forwarded before them.
    assert re.search(r"^tandem router listening on \S+:\d+$", output, re.MULTILINE)
    assert output.count("listening on") == 2
    assert output.index("tandem router listening on") < output.index("tandem HTTP API listening on")
    assert re.search(r"^tandem serve: kvstore ready at \S+:\d+$", output, re.MULTILINE)


@pytest.mark.slow
def test_a_killed_child_stops_the_rest_and_fails_the_launcher(tiny_llama, marker, tmp_path):
    # The default layout: a prefill and a decode worker.
    process, url = start_serve("serve-processes-split", _serve_flags(tiny_llama), tmp_path)
    try:
        _greedy_over_http(url, tiny_llama)
        children = marked(marker, exclude=process.proc.pid)
        assert len(children) == 5
        decode = next(p for p in children if " decode " in cmdline(p))
        os.kill(decode, signal.SIGKILL)
        assert process.proc.wait(30) == 1
        assert wait_until(lambda: not marked(marker), timeout=5), [cmdline(p) for p in marked(marker)]
    finally:
        process.stop()
    assert re.search(rf"decode \(pid {decode}\) was killed by SIGKILL; stopping the other services",
                     "".join(process.lines))


def test_a_child_failing_at_start_fails_the_launcher_quickly(marker, tmp_path):
    started = time.monotonic()
    process = start_service("serve-bad-model", ["serve", "--processes", "--model", str(tmp_path / "no-such-model"),
                                                "--listen", "127.0.0.1:0", "--port", "0"],
                            tmp_path, expect_failure=True)
    assert process.proc.returncode == 1
    assert time.monotonic() - started < 60
    output = "".join(process.lines)
    assert re.search(r"tandem serve: prefill \(pid \d+\) exited with code 2; stopping the other services", output)
    assert "[prefill]" in output and "no-such-model" in output  # the child's own error, forwarded
    assert "HTTP API listening" not in output
    assert wait_until(lambda: not marked(marker), timeout=5), [cmdline(p) for p in marked(marker)]


def test_sigint_during_start_up_stops_the_children_and_exits_0(tiny_llama, marker, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "serve", *_serve_flags(tiny_llama),
                             "--listen", "127.0.0.1:0", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=service_env())
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if "kvstore ready at" in line:
                break
        assert marked(marker, exclude=proc.pid)  # the kvstore, at least
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert wait_until(lambda: not marked(marker), timeout=5), [cmdline(p) for p in marked(marker)]
    finally:
        if proc.poll() is None:
            proc.kill()


# Stand-in children: a python one-liner that prints a readiness line, or not.
def _child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


READY_THEN_SLEEP = """
    import sys, time
    print("before", flush=True)
    print("fake listening on 127.0.0.1:1234", flush=True)
    print("after", file=sys.stderr, flush=True)
    time.sleep(60)
"""


def test_output_is_forwarded_with_the_name_and_the_readiness_line_is_consumed():
    log = io.StringIO()
    children = Children(log=log)
    try:
        assert children.start("fake", _child(READY_THEN_SLEEP), timeout=30) == "127.0.0.1:1234"
        assert wait_until(lambda: "[fake] after" in log.getvalue(), timeout=5)
    finally:
        children.stop_all()
    assert log.getvalue().splitlines() == ["[fake] before", "[fake] after"]


def test_a_child_that_never_gets_ready_times_out_named():
    children = Children(log=io.StringIO())
    try:
        with pytest.raises(ChildExited, match=r"silent \(pid \d+\) printed no 'listening on' line within 1 s"):
            children.start("silent", _child("import time; time.sleep(60)"), timeout=1)
    finally:
        children.stop_all()
    assert children.children[0].proc.returncode == -signal.SIGTERM


def test_stop_all_kills_a_child_that_ignores_sigterm():
    children = Children(log=io.StringIO())
    stubborn = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("listening on 127.0.0.1:1", flush=True)
        time.sleep(60)
    """
    children.start("stubborn", _child(stubborn), timeout=30)
    started = time.monotonic()
    children.stop_all(grace=0.5)
    assert children.children[0].proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_children_die_with_a_sigkilled_launcher():
    # The child writes nothing after its readiness line: a write to the dead launcher's pipe would
    # kill it too (BrokenPipeError), and the test is about PR_SET_PDEATHSIG.
    quiet = _child("import time; print('listening on 127.0.0.1:1', flush=True); time.sleep(60)")
    launcher_code = f"""
        import sys, time
        from tandem.process_mesh import Children
        children = Children()
        children.start("fake", {quiet!r}, timeout=30)
        print("child", children.children[0].proc.pid, flush=True)
        time.sleep(60)
    """
    launcher = subprocess.Popen(_child(launcher_code), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=service_env())
    try:
        line = launcher.stdout.readline()  # type: ignore[union-attr]
        child = int(line.split()[1])
        assert _alive(child)
        launcher.kill()
        launcher.wait(10)
        assert wait_until(lambda: not _alive(child), timeout=5)  # PR_SET_PDEATHSIG
    finally:
        if launcher.poll() is None:
            launcher.kill()
