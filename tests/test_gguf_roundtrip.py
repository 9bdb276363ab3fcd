"""GGUF files written here from tiny HF models load back as exactly those models.

The writer below follows llama.cpp's converter conventions independently of
the loader: its own name table, and q/k rows permuted into the interleaved
RoPE layout for ``llama`` only (llama.cpp's qwen converters keep HF's order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from services.engine.errors import UnsupportedArchitectureError
from services.engine.models.checkpoint import load_checkpoint
from services.engine.models.gguf_config import rope_parameters_from_freq_factors

_GGUF_STEMS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_GLOBALS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GGUF_GLOBALS:
        return _GGUF_GLOBALS[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_STEMS[module]}.{kind}"


def _llama_cpp_permute(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    rows = tensor.shape[0]
    grouped = tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:])
    return grouped.transpose(1, 2).reshape(tensor.shape)


def _write_gguf(model: PreTrainedModel, arch: str, path: Path, matrix_dtype: np.dtype) -> None:
    config = model.config
    # Qwen2Config has no head_dim attribute: HF derives it from the hidden size.
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_eot_token_id(config.eos_token_id + 1)
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    for name, tensor in state.items():
        if arch == "llama" and ".q_proj." in name:
            tensor = _llama_cpp_permute(tensor, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            tensor = _llama_cpp_permute(tensor, config.num_key_value_heads)
        array = tensor.numpy()
        writer.add_tensor(_gguf_name(name), array.astype(matrix_dtype) if array.ndim == 2 else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    ("arch", "matrix_dtype", "expected_dtype"),
    [
        ("llama", np.float32, torch.float32),
        ("llama", np.float16, torch.float16),
        ("qwen2", np.float32, torch.float32),
        ("qwen3", np.float32, torch.float32),
    ],
)
def test_gguf_round_trip(
    tmp_path: Path,
    tiny_checkpoints: dict[str, Path],
    arch: str,
    matrix_dtype: np.dtype,
    expected_dtype: torch.dtype,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints[arch], dtype=torch.float32)
    path = tmp_path / f"{arch}.gguf"
    _write_gguf(model, arch, path, matrix_dtype)

    checkpoint = load_checkpoint(str(path))
    assert checkpoint.format == "gguf"
    assert checkpoint.architecture == type(model).__name__
    assert checkpoint.source_dtype == expected_dtype
    assert checkpoint.generation_eos_token_ids == (model.config.eos_token_id + 1,)
    ours_config, reference_config = checkpoint.hf_config, model.config
    for field in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rope_parameters",
        "tie_word_embeddings", "bos_token_id", "eos_token_id",
    ):
        assert getattr(ours_config, field) == getattr(reference_config, field), field
    assert getattr(ours_config, "head_dim", None) == getattr(reference_config, "head_dim", None)
    assert ours_config.rms_norm_eps == pytest.approx(reference_config.rms_norm_eps, rel=1e-6)

    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    ours = dict(checkpoint.weights())
    assert set(ours) == set(state)
    for name, tensor in ours.items():
        expected = state[name]
        if expected.ndim == 2:
            # What a float16 file can hold of the float32 original.
            expected = expected.to(torch.from_numpy(np.zeros(0, matrix_dtype)).dtype).float()
        assert tensor.dtype == torch.float32 and torch.equal(tensor, expected), name


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    path = tmp_path / "phi.gguf"
    writer = GGUFWriter(str(path), "phi2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="phi2"):
        load_checkpoint(str(path))


@pytest.mark.parametrize(("factor", "head_dim", "theta"), [(8.0, 128, 500000.0), (32.0, 64, 500000.0)])
def test_llama3_rope_recovered_from_rope_freqs(factor: float, head_dim: int, theta: float) -> None:
    # llama.cpp stores Llama 3.1 / 3.2 rope scaling as per-frequency divisors;
    # derive them from transformers' own llama3 rope and recover the parameters.
    rope = {
        "rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
        max_position_embeddings=131072, rope_parameters=rope,
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    divisors = (plain / scaled).double().numpy()
    assert rope_parameters_from_freq_factors(divisors, head_dim, theta) == rope
    unscaled = rope_parameters_from_freq_factors(np.ones(head_dim // 2), head_dim, theta)
    assert unscaled["rope_type"] == "default"
    with pytest.raises(UnsupportedArchitectureError, match="rope_freqs"):
        rope_parameters_from_freq_factors(divisors[::-1].copy(), head_dim, theta)
