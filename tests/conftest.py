"""Session-wide fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny_models import TINY_ARCHS, build_tiny_checkpoint

# Fixtures of the kvstore tests: a real Redis, in-process stores, the shm leak check;
# of the gateway tests: a `tandem serve` subprocess of the tiny Llama.
pytest_plugins = ["tests.redis_server", "tests.kvstore_helpers", "tests.gateway_harness"]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Arch name -> folder of a tiny random HF checkpoint (float32, seed 0), built once per session.

    Keys are ``TINY_ARCHS``: llama, llama3, mistral, qwen2, qwen3. Tests must
    treat the folders as read-only; build a private one with
    ``build_tiny_checkpoint`` to vary anything.
    """
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {arch: build_tiny_checkpoint(arch, root / arch) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoints: dict[str, Path]) -> Path:
    """Folder of the tiny random Llama checkpoint."""
    return tiny_checkpoints["llama"]
