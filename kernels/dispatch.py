"""The one place that decides which kernel implementation runs.

A backend is a module exposing the functions of :mod:`kernels.reference`
(``linear``, ``linear_silu_and_mul`` (the gated MLP's projection and
activation as one op), ``prepare_linear_weight``, ``rms_norm``, ``apply_rope``,
``silu_and_mul``, ``write_kv_cache``, ``apply_rope_and_write_kv_cache`` (RoPE
and the cache write as one op, which the model calls: one launch on Triton),
``paged_attention``) with the same signatures. The model asks once, at build
time, so no per-call dispatch cost lands on the hot path.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

# Backends by name; each entry is imported lazily so CPU-only installs never
# import GPU code.
_BACKEND_MODULES = {
    "torch": "kernels.reference",
    "cpu": "kernels.cpu",
    "triton": "kernels.triton",
}


def register_backend(name: str, module_path: str) -> None:
    """Make another implementation selectable (e.g. Triton on CUDA)."""
    _BACKEND_MODULES[name] = module_path


def backend_name_for(device: torch.device) -> str:
    """``TANDEM_KERNELS`` overrides; otherwise the best backend registered for the device."""
    forced = os.environ.get("TANDEM_KERNELS")
    if forced:
        if forced not in _BACKEND_MODULES:
            raise ValueError(f"TANDEM_KERNELS={forced!r}; known backends: {sorted(_BACKEND_MODULES)}")
        return forced
    if device.type == "cuda" and "triton" in _BACKEND_MODULES:
        return "triton"
    if device.type == "cpu":
        return "cpu"
    return "torch"


def select_backend(device: torch.device) -> ModuleType:
    return importlib.import_module(_BACKEND_MODULES[backend_name_for(device)])
