"""Shared bits of every benchmark: environment facts and one-JSON-line output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str:
    """The commit measured; the device machine's copy has no .git, so ``TANDEM_COMMIT`` wins."""
    if os.environ.get("TANDEM_COMMIT"):
        return os.environ["TANDEM_COMMIT"]
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], check=False, cwd=root, capture_output=True, text=True).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Where a result was measured: device, library versions, commit."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": git_commit(),
    }


def emit(bench: str, **fields: Any) -> dict[str, Any]:
    """Print one result as one JSON line (flushed, so partial runs still leave data)."""
    record = {"bench": bench, **fields, **environment()}
    print(json.dumps(record), flush=True)
    sys.stdout.flush()
    return record
