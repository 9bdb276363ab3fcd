"""Two host-side suspects of a slow run: Triton compiling mid-run, and the garbage collector.

Triton compiles a kernel variant the first time it sees a new specialization
(an integer argument that is 1 or divisible by 16, a pointer's alignment, a
constexpr). A variant first met during a timed run blocks the host for the
compile, or for loading it from the disk cache. :func:`compiled_triton_variants`
lists every variant the project's kernels hold, so two snapshots tell what a
run added. :class:`GcPauses` times the collector's passes through ``gc.callbacks``.
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any, Self

import kernels.triton


def compiled_triton_variants() -> dict[str, set[str]]:
    """Kernel name -> the specialization keys it has compiled or loaded in this process."""
    variants: dict[str, set[str]] = {}
    for info in pkgutil.iter_modules(kernels.triton.__path__):
        module = importlib.import_module(f"kernels.triton.{info.name}")
        for name, obj in vars(module).items():
            caches = getattr(getattr(obj, "fn", obj), "device_caches", None)
            if not caches or not name.endswith("_kernel"):
                continue
            keys = variants.setdefault(name, set())
            for entry in list(caches.values()):
                cache = entry[0] if isinstance(entry, tuple) else entry
                keys.update(str(key) for key in cache)
    return variants


def new_variants(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """The variants in ``after`` that ``before`` lacked, per kernel."""
    added = {name: sorted(keys - before.get(name, set())) for name, keys in after.items()}
    return {name: keys for name, keys in added.items() if keys}


@dataclass
class GcPauses:
    """Count and wall time of the collector's passes per generation while installed."""

    count: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    longest_s: float = 0.0
    full_pass_at_s: list[float] = field(default_factory=list)  # since __enter__
    _entered: float = 0.0
    _began: float = 0.0

    def __enter__(self) -> Self:
        self._entered = time.perf_counter()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        generation = info["generation"]
        self.count[generation] = self.count.get(generation, 0) + 1
        self.seconds[generation] = self.seconds.get(generation, 0.0) + took
        self.longest_s = max(self.longest_s, took)
        if generation == 2:
            self.full_pass_at_s.append(self._began - self._entered)

    def summary(self) -> dict[str, Any]:
        return {"gc_collections": {str(g): n for g, n in sorted(self.count.items())},
                "gc_ms": {str(g): round(s * 1e3, 1) for g, s in sorted(self.seconds.items())},
                "gc_longest_ms": round(self.longest_s * 1e3, 2),
                "gc_full_pass_at_s": [round(t, 2) for t in self.full_pass_at_s]}
