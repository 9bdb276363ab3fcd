"""Keep the long-lived heap out of the garbage collector's full passes while an engine runs.

A full (generation 2) pass walks every tracked object in the process: the
model, the tokenizer and the imported libraries, which live as long as the
engine and are never garbage. On the GPU bench with 384 running sequences
such a pass took up to ~220 ms, a stall of several decode steps with the GPU
idle. Freezing moves every object that exists now into a generation the
collector skips, so its passes walk only what serving allocates afterwards.
With it (and offline outputs built only for finished requests) a 1000/1000
run had one full pass instead of three or four (bench/RESULTS.md).

Freezing is process-wide, so it is scoped: unfrozen again when the run ends,
so anything that became garbage meanwhile is collected as usual and nothing
is kept alive for good. If the heap is already frozen (by the application,
or another engine in this process) it is left as it is.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[bool]:
    """Freeze the heap for the ``with`` block; yields whether this call froze it."""
    if gc.get_freeze_count():
        yield False
        return
    # No collect first: garbage frozen here is unfrozen and collected on exit.
    gc.freeze()
    try:
        yield True
    finally:
        gc.unfreeze()
