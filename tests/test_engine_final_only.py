"""``LLMEngine.step(final_only=True)``: finished requests only, each once, with the same tokens."""

from __future__ import annotations

from services.engine.llm import LLM
from services.engine.sampling_params import SamplingParams


def _run(engine, final_only: bool) -> list:
    outputs = []
    while engine.has_unfinished_requests():
        outputs.extend(engine.step(final_only=final_only))
    return outputs


def test_final_only_returns_each_finished_request_once_with_the_same_tokens(tiny_checkpoints) -> None:
    llm = LLM(str(tiny_checkpoints["llama"]), dtype="float32", num_kv_blocks=64, max_model_len=64)
    engine = llm.engine
    lengths = {"short": 2, "long": 7}
    results = {}
    for final_only in (False, True):
        for name, max_tokens in lengths.items():
            engine.add_request(f"{name}-{final_only}", [5, 6, 7, 8],
                               SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        results[final_only] = _run(engine, final_only)
    streamed, final = results[False], results[True]
    # Without the flag, every step reports the running requests too.
    assert len(streamed) > 2 and any(not o.finished for o in streamed)
    assert [o.request_id for o in final] == ["short-True", "long-True"]
    assert all(o.finished for o in final)
    streamed_final = {o.request_id.split("-")[0]: o.outputs[0].token_ids for o in streamed if o.finished}
    assert {o.request_id.split("-")[0]: o.outputs[0].token_ids for o in final} == streamed_final
    assert [len(o.outputs[0].token_ids) for o in final] == [2, 7]
