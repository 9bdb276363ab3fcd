"""A model step that fails aborts only its own requests; the engine keeps serving, nothing leaks.

With overlap scheduling a failure can surface at either half of a step:
``launch`` (building inputs, queueing the forward) or ``collect`` (reading the
sampled ids back), while the next step is already queued.
"""

from __future__ import annotations

import random

import pytest

from tandem import SamplingParams
from tests.fixtures.hf_oracle import make_prompts
from tests.test_engine_vs_hf import assert_no_leak, make_llm

PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def fail_once(runner, method: str) -> None:
    """Make ``runner.<method>`` raise on its next call only."""
    original = getattr(runner, method)

    def failing(*args, **kwargs):
        setattr(runner, method, original)
        raise RuntimeError("injected device failure")

    setattr(runner, method, failing)


@pytest.mark.parametrize("overlap", [False, True], ids=["sequential", "overlap"])
@pytest.mark.parametrize("method", ["launch", "collect"])
def test_failed_step_aborts_its_requests_and_the_engine_goes_on(tiny_checkpoints, overlap, method):
    llm = make_llm(tiny_checkpoints["llama"], overlap_scheduling=overlap)
    engine = llm.engine
    first, second, later = make_prompts(llm.tokenizer, 3, random.Random(9), min_len=5, max_len=40)
    expected = llm.generate([later], PARAMS)[0].outputs[0].token_ids

    engine.add_request("a", first, PARAMS)
    engine.add_request("b", second, PARAMS)
    engine.step()  # a and b are prefilled (and, overlapped, still in flight)
    fail_once(engine.runner, method)
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    assert {rid: o.outputs[0].finish_reason for rid, o in finished.items()} == {"a": "abort", "b": "abort"}
    assert_no_leak(llm)

    # The engine still serves, with the same tokens as before the failure.
    assert llm.generate([later], PARAMS)[0].outputs[0].token_ids == expected
    assert_no_leak(llm)
