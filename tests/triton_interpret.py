"""Where the Triton kernel tests run: compiled on a GPU, else interpreted on CPU.

Triton picks compiled or interpreted @triton.jit functions, its own tl.sum & co.
included, when each is defined, so TRITON_INTERPRET=1 only takes effect if it
is set before triton is first imported. Import this module before triton. A
full test session imports triton early (transformers -> torch._dynamo), so then
a kernel test module's tests run in a fresh interpreter process instead: each
such module defines ``test_interpreted_suite_in_a_fresh_process`` calling
:func:`run_module_in_fresh_process`, and an autouse fixture calling
:func:`skip_unless_runs_here` for every other test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

RUNS_HERE = (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1" or "triton" not in sys.modules
)
if RUNS_HERE and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def skip_unless_runs_here(request: pytest.FixtureRequest) -> None:
    if not RUNS_HERE and request.function.__name__ != "test_interpreted_suite_in_a_fresh_process":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; "
                    "test_interpreted_suite_in_a_fresh_process runs this test")


def run_module_in_fresh_process(path: str) -> None:
    if RUNS_HERE:
        pytest.skip("the suite runs in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal values on the test device, drawn in float32 then cast."""
    return torch.randn(*shape, device=DEVICE).to(dtype)
