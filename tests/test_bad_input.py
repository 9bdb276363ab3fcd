"""Bad input raises a precise exception, and the engine keeps serving everyone else."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from services.engine.errors import (
    EmptyPromptError,
    InvalidRequestError,
    InvalidSamplingParamsError,
    ModelFilesMissingError,
    PromptTooLongError,
    UnsupportedArchitectureError,
)
from tandem import LLM, SamplingParams
from tests.fixtures.hf_oracle import make_prompts
from tests.test_engine_vs_hf import assert_no_leak, make_llm


@pytest.fixture(scope="module")
def llm(tiny_checkpoints) -> LLM:
    return make_llm(tiny_checkpoints["qwen2"], max_model_len=128)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": 2.0}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n must"),
        ({"logprobs": 50}, "logprobs"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_out_of_range_sampling_params(kwargs, message):
    with pytest.raises(InvalidSamplingParamsError, match=message):
        SamplingParams(**kwargs)


def test_bad_prompts_raise_and_running_requests_finish(llm):
    engine = llm.engine
    good = make_prompts(llm.tokenizer, 2, random.Random(1), min_len=5, max_len=30)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    expected = [o.outputs[0].token_ids for o in llm.generate(good, params)]

    engine.add_request("good-0", good[0], params)
    engine.step()
    with pytest.raises(EmptyPromptError, match="empty"):
        engine.add_request("bad-empty", [], params)
    with pytest.raises(EmptyPromptError):
        engine.add_request("bad-empty-text", "", params)
    with pytest.raises(PromptTooLongError, match="max_model_len is 128"):
        engine.add_request("bad-long", list(range(5, 205)), params)
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        engine.add_request("bad-token", [1, 2, 10**7], params)
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("good-0", good[1], params)
    engine.add_request("good-1", good[1], params)
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert [done["good-0"].outputs[0].token_ids, done["good-1"].outputs[0].token_ids] == expected
    assert_no_leak(llm)


def test_generate_validates_every_prompt_before_running_any(llm):
    params = SamplingParams(temperature=0, max_tokens=4)
    with pytest.raises(EmptyPromptError):
        llm.generate([[5, 6, 7], []], params)
    assert_no_leak(llm)
    assert len(llm.generate([[5, 6, 7]], params)[0].outputs[0].token_ids) >= 1


def test_generation_stops_at_max_model_len(llm):
    out = llm.generate([list(range(10, 120))], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    sample = out[0].outputs[0]
    assert len(sample.token_ids) == 128 - 110 and sample.finish_reason == "length"


def test_unknown_architecture(tiny_checkpoints, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(tiny_checkpoints["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel"):
        LLM(model=str(folder), num_kv_blocks=64)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_files(tiny_checkpoints, tmp_path, missing):
    folder = tmp_path / "partial"
    shutil.copytree(tiny_checkpoints["llama"], folder)
    (folder / missing).unlink()
    with pytest.raises(ModelFilesMissingError):
        LLM(model=str(folder), num_kv_blocks=64)


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelFilesMissingError, match="does-not-exist"):
        LLM(model=str(tmp_path / "does-not-exist"), num_kv_blocks=64)
