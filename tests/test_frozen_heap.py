"""The engine's scoped heap freeze: on for the run, off after, and others' freezes respected."""

from __future__ import annotations

import gc
import weakref

from services.engine.frozen_heap import frozen_heap
from services.engine.llm import LLM
from services.engine.sampling_params import SamplingParams


def test_freezes_for_the_block_only() -> None:
    gc.unfreeze()
    with frozen_heap() as froze:
        assert froze
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0


def test_an_existing_freeze_is_left_alone() -> None:
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with frozen_heap() as froze:
            assert not froze
        assert gc.get_freeze_count() == count
    finally:
        gc.unfreeze()


def test_garbage_frozen_in_the_block_is_collected_after_it() -> None:
    gc.unfreeze()

    class Node:
        pass

    node = Node()
    node.self = node  # a reference cycle: only the collector frees it
    ref = weakref.ref(node)
    del node
    with frozen_heap():
        gc.collect()
        assert ref() is not None  # frozen: the collector's passes skip it
    gc.collect()
    assert ref() is None


def test_generate_runs_frozen_and_unfreezes(tiny_checkpoints) -> None:
    gc.unfreeze()
    llm = LLM(str(tiny_checkpoints["llama"]), dtype="float32", num_kv_blocks=64, max_model_len=64)
    seen: list[int] = []
    step = llm.engine.step
    llm.engine.step = lambda **kw: (seen.append(gc.get_freeze_count()), step(**kw))[1]
    llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=3))
    assert seen and all(count > 1000 for count in seen)
    assert gc.get_freeze_count() == 0
