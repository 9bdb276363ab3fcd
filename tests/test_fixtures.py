"""The tiny checkpoints and the HF oracle are themselves correct and useful as tests.

A fixture that is silently wrong (say, zero biases, or a degenerate model that
always emits the same token) would let broken engine code pass the oracle
comparison, so these checks pin down the properties the engine tests rely on.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tests.fixtures.hf_oracle import hf_greedy, hf_logprobs, load_hf_model, make_prompts
from tests.fixtures.tiny_models import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    SPECIAL_TOKENS,
    TINY_ARCHS,
    build_tiny_checkpoint,
    train_tiny_tokenizer,
)

EXPECTED_MODEL_TYPE = {
    "llama": "llama",
    "llama3": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def _long_prompt(checkpoint: Path) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return make_prompts(tokenizer, 2, random.Random(0))[1]


def _last_logits(model: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([prompt])).logits[0, -1]


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_training_is_deterministic() -> None:
    first, second = train_tiny_tokenizer(), train_tiny_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert 512 <= len(first) <= 1024
    assert [first.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS] == [0, 1, 2]


@pytest.mark.parametrize(
    "text",
    [
        "Hello world, this is a test.",
        "  leading spaces, trailing tab\t and\nnew lines\n\n",
        "Unseen words: zyxwvut quixotic, ünïcödé, 日本語, emoji 😀🚀",
        "def f(x):\n    return x ** 2  # code",
    ],
)
def test_tokenizer_round_trips_text(tiny_llama: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(token_ids) == text


def test_tokenizer_has_chatml_template_and_special_tokens(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (ENDOFTEXT, IM_END, ENDOFTEXT)
    assert tokenizer.chat_template

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Special tokens must encode as single ids, not as their spelled-out bytes.
    token_ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert token_ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3
    assert token_ids.count(tokenizer.convert_tokens_to_ids(IM_END)) == 2


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_checkpoint_loads_with_transformers(tiny_checkpoints: dict[str, Path], arch: str) -> None:
    path = tiny_checkpoints[arch]
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (path / name).is_file(), name

    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    generation_config = GenerationConfig.from_pretrained(path)
    assert config.model_type == EXPECTED_MODEL_TYPE[arch]
    assert config.vocab_size == len(tokenizer)
    assert (config.hidden_size, config.head_dim, config.intermediate_size) == (64, 16, 128)
    assert 2 <= config.num_hidden_layers <= 4
    assert config.max_position_embeddings == 512
    # GQA: two query heads share each KV head.
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.eos_token_id == generation_config.eos_token_id == tokenizer.eos_token_id
    assert config.bos_token_id == generation_config.bos_token_id == tokenizer.bos_token_id
    assert config.pad_token_id == generation_config.pad_token_id == tokenizer.pad_token_id

    model = load_hf_model(path)
    assert model.dtype == torch.float32
    # Every parameter HF expects is in the file (nothing silently random on load).
    file_names = set(_tensors(path))
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    assert file_names == expected


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_only_qwen2_has_biases_and_they_are_random(tiny_checkpoints: dict[str, Path], arch: str) -> None:
    tensors = _tensors(tiny_checkpoints[arch])
    biases = {name: tensor for name, tensor in tensors.items() if name.endswith(".bias")}
    if arch != "qwen2":
        assert biases == {}
        return
    num_layers = AutoConfig.from_pretrained(tiny_checkpoints[arch]).num_hidden_layers
    expected = {f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(num_layers) for p in "qkv"}
    assert set(biases) == expected
    for name, bias in biases.items():
        assert bias.abs().min() > 0 and bias.std() > 0.1, name


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_only_qwen3_has_qk_norms_and_all_norms_are_random(
    tiny_checkpoints: dict[str, Path], arch: str
) -> None:
    tensors = _tensors(tiny_checkpoints[arch])
    qk_norms = {name: t for name, t in tensors.items() if name.endswith(("q_norm.weight", "k_norm.weight"))}
    assert bool(qk_norms) == (arch == "qwen3")
    for name, weight in qk_norms.items():
        assert weight.shape == (16,), name
    # HF would leave every RMSNorm gain at exactly 1, which cannot reveal a
    # loader that drops them.
    for name, weight in tensors.items():
        if "norm" in name:
            assert weight.std() > 0.1 and weight.min() > 0, name


def test_llama3_has_llama3_rope_and_tied_embeddings(tiny_checkpoints: dict[str, Path]) -> None:
    path = tiny_checkpoints["llama3"]
    raw = json.loads((path / "config.json").read_text())
    assert raw["tie_word_embeddings"] is True
    # transformers 5 writes `rope_parameters` (with rope_theta inside), not `rope_scaling`.
    assert raw["rope_parameters"] == {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,
    }
    assert "lm_head.weight" not in _tensors(path)
    model = load_hf_model(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    # All three llama3 frequency bands occur: kept, divided by 8, interpolated.
    inv_freq = model.model.rotary_emb.inv_freq
    unscaled = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    ratio = unscaled / inv_freq
    kept = torch.isclose(ratio, torch.tensor(1.0))
    divided = torch.isclose(ratio, torch.tensor(8.0))
    assert kept.any() and divided.any() and (~kept & ~divided).any()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_other_archs_have_untied_default_rope(tiny_checkpoints: dict[str, Path], arch: str) -> None:
    raw = json.loads((tiny_checkpoints[arch] / "config.json").read_text())
    assert raw["tie_word_embeddings"] is False
    assert raw["rope_parameters"]["rope_type"] == "default"
    assert "lm_head.weight" in _tensors(tiny_checkpoints[arch])


def test_arch_features_matter_to_the_output(tiny_checkpoints: dict[str, Path]) -> None:
    """Dropping any distinctive feature visibly changes the logits, so an engine that ignores it fails."""
    # qwen2 with its q/k/v biases zeroed.
    path = tiny_checkpoints["qwen2"]
    prompt = _long_prompt(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    reference = _last_logits(model, prompt)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.zero_()
    assert (reference - _last_logits(model, prompt)).abs().max() > 0.5

    # qwen3 with its q/k norm gains reset to one.
    path = tiny_checkpoints["qwen3"]
    model = AutoModelForCausalLM.from_pretrained(path)
    reference = _last_logits(model, prompt)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.fill_(1.0)
    assert (reference - _last_logits(model, prompt)).abs().max() > 0.5

    # llama3 read as if its rope were unscaled.
    path = tiny_checkpoints["llama3"]
    config = AutoConfig.from_pretrained(path)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    plain_rope = AutoModelForCausalLM.from_pretrained(path, config=config)
    reference = _last_logits(load_hf_model(path), prompt)
    assert (reference - _last_logits(plain_rope, prompt)).abs().max() > 0.5


def test_build_is_deterministic_per_seed_and_leaves_global_rng_alone(tmp_path: Path) -> None:
    rng_state = torch.get_rng_state()
    first = _tensors(build_tiny_checkpoint("llama", tmp_path / "a", seed=0))
    second = _tensors(build_tiny_checkpoint("llama", tmp_path / "b", seed=0))
    other_seed = _tensors(build_tiny_checkpoint("llama", tmp_path / "c", seed=1))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert first.keys() == second.keys() == other_seed.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["lm_head.weight"], other_seed["lm_head.weight"])


def test_build_honours_dtype_and_config_overrides(tmp_path: Path) -> None:
    path = build_tiny_checkpoint("qwen3", tmp_path / "bf16", dtype=torch.bfloat16, num_hidden_layers=2)
    config = AutoConfig.from_pretrained(path)
    assert config.num_hidden_layers == 2
    assert config.dtype == torch.bfloat16
    assert {tensor.dtype for tensor in _tensors(path).values()} == {torch.bfloat16}
    assert len(hf_greedy(path, [[5, 6, 7]], 4, dtype=torch.bfloat16)[0]) == 4


# ---------------------------------------------------------------- oracle


def test_make_prompts_is_deterministic_varied_and_free_of_special_tokens(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    prompts = make_prompts(tokenizer, 16, random.Random(3))
    assert prompts == make_prompts(tokenizer, 16, random.Random(3))
    assert prompts != make_prompts(tokenizer, 16, random.Random(4))
    lengths = [len(prompt) for prompt in prompts]
    assert min(lengths) == 3 and max(lengths) == 200
    assert len(set(lengths)) >= 8
    special_ids = set(tokenizer.all_special_ids)
    assert not any(token_id in special_ids for prompt in prompts for token_id in prompt)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_greedy_outputs_are_varied_with_clear_argmax(tiny_checkpoints: dict[str, Path], arch: str) -> None:
    path = tiny_checkpoints[arch]
    prompts = make_prompts(AutoTokenizer.from_pretrained(path), 8, random.Random(0))
    outputs = hf_greedy(path, prompts, 32)

    assert [len(output) for output in outputs] == [32] * 8
    assert len({tuple(output) for output in outputs}) == 8
    for output in outputs:
        assert len(set(output)) >= 8, output

    gaps: list[float] = []
    for prompt, output in zip(prompts, outputs):
        logprobs = hf_logprobs(path, prompt, output)
        # The two oracle entry points agree: greedy picks each row's argmax.
        assert logprobs.argmax(dim=-1).tolist() == output
        top2 = logprobs.topk(2, dim=-1).values
        gaps.extend((top2[:, 0] - top2[:, 1]).tolist())
    assert statistics.median(gaps) > 0.5
    assert min(gaps) > 1e-5  # comfortably above float32 rounding of the logits


def test_hf_greedy_ignores_eos_and_generation_config(tiny_llama: Path, tmp_path: Path) -> None:
    prompts = make_prompts(AutoTokenizer.from_pretrained(tiny_llama), 2, random.Random(1))
    outputs = hf_greedy(tiny_llama, prompts, 48)
    # The repetition penalty below only bites if greedy repeats some token.
    assert any(len(set(output)) < len(output) for output in outputs)

    # Make a token greedy emits early the checkpoint's EOS, and ship settings
    # that generate() would otherwise apply even to greedy decoding: the
    # oracle must neither stop at EOS nor steer around it or repeated tokens.
    edited = tmp_path / "edited"
    shutil.copytree(tiny_llama, edited)
    new_eos = outputs[0][2]
    config = json.loads((edited / "config.json").read_text())
    config["eos_token_id"] = new_eos
    (edited / "config.json").write_text(json.dumps(config))
    generation = json.loads((edited / "generation_config.json").read_text())
    generation.update(eos_token_id=new_eos, repetition_penalty=100.0, min_new_tokens=48)
    (edited / "generation_config.json").write_text(json.dumps(generation))

    assert hf_greedy(edited, prompts, 48) == outputs


def test_hf_logprobs_are_normalized_and_prefix_consistent(tiny_llama: Path) -> None:
    prompt = [10, 20, 30, 40]
    continuation = hf_greedy(tiny_llama, [prompt], 12)[0]
    logprobs = hf_logprobs(tiny_llama, prompt, continuation)
    assert logprobs.shape == (12, AutoConfig.from_pretrained(tiny_llama).vocab_size)
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs.logsumexp(dim=-1), torch.zeros(12), atol=1e-5, rtol=0)
    # Causality: later continuation tokens never change earlier rows.
    prefix_logprobs = hf_logprobs(tiny_llama, prompt, continuation[:5])
    torch.testing.assert_close(prefix_logprobs, logprobs[:5], atol=1e-5, rtol=1e-5)
