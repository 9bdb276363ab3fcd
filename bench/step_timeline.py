"""Per-step wall-clock timeline of an engine run, from the runner's ``launch`` and ``collect``.

Wrapping the two runner calls records, for every step, when its launch began
and ended, what it held (sequences, tokens, decode-only or not) and how long
the host then waited for its sampled ids. The summary splits a run into its
prompt phase (until the first decode-only step) and equal buckets of decode
steps, and gives each bucket's wall time per step with its host parts:
launch (input building and queueing), wait (blocked on the GPU) and the rest
(scheduling and output processing). A wait near zero means the host, not the
GPU, paced that bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.engine.decode_inputs import is_decode_only


@dataclass
class StepRecord:
    decode_only: bool
    sequences: int
    tokens: int
    launch_began: float
    launch_ended: float
    wait_s: float = 0.0


@dataclass
class StepTimeline:
    steps: list[StepRecord] = field(default_factory=list)
    _by_step: dict[int, StepRecord] = field(default_factory=dict)

    def wrap_launch(self, launch: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(step: Any, *args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            out = launch(step, *args, **kwargs)
            record = StepRecord(is_decode_only(step.chunks), len(step.chunks),
                                sum(c.num_new_tokens for c in step.chunks), began, time.perf_counter())
            self.steps.append(record)
            self._by_step[id(step)] = record
            return out

        return wrapped

    def wrap_collect(self, collect: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(launched: Any, *args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            out = collect(launched, *args, **kwargs)
            record = self._by_step.pop(id(launched.step), None)
            if record is not None:
                record.wait_s = time.perf_counter() - began
            return out

        return wrapped


def _bucket(steps: list[StepRecord], ended_at: float) -> dict[str, Any]:
    """Wall time from the first step's launch to ``ended_at``, per step, with its host parts."""
    n = len(steps)
    wall = ended_at - steps[0].launch_began
    launch = sum(s.launch_ended - s.launch_began for s in steps)
    wait = sum(s.wait_s for s in steps)
    return {"steps": n, "sequences": round(sum(s.sequences for s in steps) / n, 1),
            "tokens_per_step": round(sum(s.tokens for s in steps) / n, 1), "wall_s": round(wall, 3),
            "ms_per_step": round(1e3 * wall / n, 3), "launch_ms": round(1e3 * launch / n, 3),
            "wait_ms": round(1e3 * wait / n, 3), "rest_ms": round(1e3 * (wall - launch - wait) / n, 3)}


def summarize(timeline: StepTimeline, ended_at: float, decode_buckets: int = 10) -> dict[str, Any]:
    """The prompt phase and ``decode_buckets`` equal runs of the decode-only steps that follow it."""
    steps = timeline.steps
    first_decode = next((i for i, s in enumerate(steps) if s.decode_only), len(steps))
    phases: dict[str, Any] = {}
    if first_decode:
        end = steps[first_decode].launch_began if first_decode < len(steps) else ended_at
        phases["prompt_phase"] = _bucket(steps[:first_decode], end)
    rest = steps[first_decode:]
    buckets = []
    size = -(-len(rest) // decode_buckets) if rest else 1
    for start in range(0, len(rest), size):
        part = rest[start : start + size]
        end = rest[start + size].launch_began if start + size < len(rest) else ended_at
        buckets.append(_bucket(part, end))
    phases["decode_buckets"] = buckets
    phases["mixed_after_first_decode"] = sum(not s.decode_only for s in rest)
    return phases
