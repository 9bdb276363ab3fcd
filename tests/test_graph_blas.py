"""The decode graphs' BLAS choice: cuBLASLt only between the skinny kernel's rows and its cap."""

from __future__ import annotations

import pytest
import torch

from kernels.triton import skinny_linear
from services.engine.graph_blas import CUBLASLT_MAX_ROWS, graph_blas_library, preferred_blas


def test_lt_only_between_the_skinny_kernel_and_the_cap() -> None:
    assert graph_blas_library(1) is None
    assert graph_blas_library(skinny_linear.MAX_ROWS) is None
    assert graph_blas_library(skinny_linear.MAX_ROWS + 1) == "cublaslt"
    assert graph_blas_library(CUBLASLT_MAX_ROWS) == "cublaslt"
    assert graph_blas_library(CUBLASLT_MAX_ROWS + 1) is None
    assert graph_blas_library(384) is None


class _FakePreference:
    """Stands in for torch's process-wide setting, which a CPU build cannot switch to cuBLASLt."""

    def __init__(self) -> None:
        self.value = "cublas"
        self.sets: list[str] = []

    def __call__(self, backend: str | None = None) -> str:
        if backend is not None:
            self.sets.append(backend)
            self.value = backend
        return self.value


def test_preference_is_restored_after_the_block_even_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakePreference()
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", fake)
    with preferred_blas("cublaslt"):
        assert fake.value == "cublaslt"
    assert fake.value == "cublas"
    with pytest.raises(RuntimeError), preferred_blas("cublaslt"):
        raise RuntimeError("capture failed")
    assert fake.value == "cublas"
    with preferred_blas(None):
        assert fake.value == "cublas"
    assert fake.sets == ["cublaslt", "cublas", "cublaslt", "cublas"]
