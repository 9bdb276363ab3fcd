"""Turn a GGUF file's metadata into the transformers config of the same model.

llama.cpp stores hyper-parameters as ``<arch>.<key>`` metadata entries; the
engine (and the prefix-cache fingerprint) only ever reads a transformers
``PretrainedConfig``, so a GGUF checkpoint is described by building exactly the
config its HF original would have had.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gguf import GGUFReader
from transformers import LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from services.engine.errors import ModelLoadError, UnsupportedArchitectureError

# GGUF ``general.architecture`` -> (HF architecture, its config class).
GGUF_ARCHITECTURES: dict[str, tuple[str, type[PretrainedConfig]]] = {
    "llama": ("LlamaForCausalLM", LlamaConfig),
    "qwen2": ("Qwen2ForCausalLM", Qwen2Config),
    "qwen3": ("Qwen3ForCausalLM", Qwen3Config),
}

# The constants Meta's Llama 3.1/3.2 checkpoints use; llama.cpp bakes the
# resulting per-frequency divisors into a ``rope_freqs`` tensor instead of
# storing them, so they are recovered by matching against this recipe.
_LLAMA3_LOW_FREQ_FACTOR = 1.0
_LLAMA3_HIGH_FREQ_FACTOR = 4.0
_LLAMA3_ORIGINAL_CONTEXT = 8192

_MISSING = object()


def read_field(reader: GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """One metadata value as a Python value, or ``default`` when absent."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ModelLoadError(f"GGUF metadata lacks the required key {key!r}")
        return default
    value = field.contents()
    # Scalars come back as numpy scalars; plain Python keeps the JSON
    # serialisation of the config (and so the fingerprint) free of numpy types.
    return value.item() if isinstance(value, np.generic) else value


def gguf_architecture(reader: GGUFReader) -> tuple[str, str]:
    """``(gguf_arch, hf_arch)``, raising for architectures tandem does not run."""
    gguf_arch = read_field(reader, "general.architecture")
    if gguf_arch not in GGUF_ARCHITECTURES:
        supported = sorted(GGUF_ARCHITECTURES)
        raise UnsupportedArchitectureError(
            f"GGUF architecture {gguf_arch!r} is not supported; supported GGUF architectures: {supported}"
        )
    return gguf_arch, GGUF_ARCHITECTURES[gguf_arch][0]


def _uniform_int(value: Any, what: str) -> int:
    # Some llama.cpp exports store per-layer arrays (e.g. head_count_kv); tandem
    # only runs models whose layers all share one value.
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise UnsupportedArchitectureError(f"per-layer {what} {value} is not supported")
        value = value[0]
    return int(value)


def llama3_rope_factors(head_dim: int, rope_theta: float, factor: float) -> np.ndarray:
    """The per-frequency divisors Llama 3 rope scaling applies, in float64."""
    inv_freq = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2.0 * math.pi / inv_freq
    low_freq_wavelen = _LLAMA3_ORIGINAL_CONTEXT / _LLAMA3_LOW_FREQ_FACTOR
    high_freq_wavelen = _LLAMA3_ORIGINAL_CONTEXT / _LLAMA3_HIGH_FREQ_FACTOR
    smooth = (_LLAMA3_ORIGINAL_CONTEXT / wavelen - _LLAMA3_LOW_FREQ_FACTOR) / (
        _LLAMA3_HIGH_FREQ_FACTOR - _LLAMA3_LOW_FREQ_FACTOR
    )
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    return np.where(wavelen < high_freq_wavelen, 1.0, np.where(wavelen > low_freq_wavelen, factor, blended))


def rope_parameters_from_freq_factors(
    freq_factors: np.ndarray, head_dim: int, rope_theta: float
) -> dict[str, Any]:
    """Recover HF ``rope_parameters`` from llama.cpp's ``rope_freqs`` tensor."""
    factor = float(np.max(freq_factors))
    if np.allclose(freq_factors, 1.0):
        return {"rope_type": "default", "rope_theta": rope_theta}
    expected = llama3_rope_factors(head_dim, rope_theta, factor)
    if expected.shape != freq_factors.shape or not np.allclose(freq_factors, expected, rtol=1e-4):
        raise UnsupportedArchitectureError(
            "GGUF rope_freqs tensor does not match Llama 3 rope scaling; this rope variant is not supported"
        )
    return {
        "rope_type": "llama3",
        "rope_theta": rope_theta,
        "factor": factor,
        "low_freq_factor": _LLAMA3_LOW_FREQ_FACTOR,
        "high_freq_factor": _LLAMA3_HIGH_FREQ_FACTOR,
        "original_max_position_embeddings": _LLAMA3_ORIGINAL_CONTEXT,
    }


def _rope_parameters(
    reader: GGUFReader, arch: str, head_dim: int, freq_factors: np.ndarray | None
) -> dict[str, Any]:
    rope_theta = float(read_field(reader, f"{arch}.rope.freq_base", 10000.0))
    if freq_factors is not None:
        return rope_parameters_from_freq_factors(freq_factors, head_dim, rope_theta)
    scaling_type = read_field(reader, f"{arch}.rope.scaling.type", "none")
    factor = read_field(reader, f"{arch}.rope.scaling.factor", None)
    # Older exports wrote linear scaling as a bare ``rope.scale_linear``.
    legacy_linear = read_field(reader, f"{arch}.rope.scale_linear", None)
    if scaling_type == "none" and legacy_linear not in (None, 1.0):
        scaling_type, factor = "linear", legacy_linear
    if scaling_type == "none" or factor in (None, 1.0):
        return {"rope_type": "default", "rope_theta": rope_theta}
    if scaling_type == "linear":
        return {"rope_type": "linear", "rope_theta": rope_theta, "factor": float(factor)}
    if scaling_type == "yarn":
        original = read_field(reader, f"{arch}.rope.scaling.original_context_length")
        return {
            "rope_type": "yarn",
            "rope_theta": rope_theta,
            "factor": float(factor),
            "original_max_position_embeddings": int(original),
        }
    raise UnsupportedArchitectureError(f"GGUF rope scaling type {scaling_type!r} is not supported")


def _special_token_ids(reader: GGUFReader) -> dict[str, int]:
    ids = {}
    for gguf_name, hf_name in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        value = read_field(reader, f"tokenizer.ggml.{gguf_name}_token_id", None)
        if value is not None:
            ids[f"{hf_name}_token_id"] = int(value)
    return ids


def extra_eos_token_ids(reader: GGUFReader) -> tuple[int, ...]:
    """End-of-turn / end-of-message ids llama.cpp records beside the main eos."""
    ids = []
    for name in ("eot", "eom"):
        value = read_field(reader, f"tokenizer.ggml.{name}_token_id", None)
        if value is not None:
            ids.append(int(value))
    return tuple(ids)


def hf_config_from_gguf(
    reader: GGUFReader,
    tensor_names: set[str],
    freq_factors: np.ndarray | None,
) -> PretrainedConfig:
    """Build the transformers config of the model in ``reader``.

    ``tensor_names`` decides what metadata cannot (weight tying, attention
    bias); ``freq_factors`` is the ``rope_freqs`` tensor when the file has one.
    """
    arch, hf_arch = gguf_architecture(reader)
    config_class = GGUF_ARCHITECTURES[arch][1]
    hidden_size = int(read_field(reader, f"{arch}.embedding_length"))
    num_heads = _uniform_int(read_field(reader, f"{arch}.attention.head_count"), "head_count")
    num_kv_heads = _uniform_int(
        read_field(reader, f"{arch}.attention.head_count_kv", num_heads), "head_count_kv"
    )
    head_dim = int(read_field(reader, f"{arch}.attention.key_length", hidden_size // num_heads))
    rotary_dim = read_field(reader, f"{arch}.rope.dimension_count", head_dim)
    if int(rotary_dim) != head_dim:
        raise UnsupportedArchitectureError(
            f"partial rotary embedding (rope dim {rotary_dim} != head dim {head_dim}) is not supported"
        )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab_size = read_field(reader, f"{arch}.vocab_size", len(tokens.data) if tokens is not None else None)
    if vocab_size is None:
        raise ModelLoadError("GGUF file has neither a vocab_size nor a token list")

    kwargs: dict[str, Any] = {
        "architectures": [hf_arch],
        "vocab_size": int(vocab_size),
        "hidden_size": hidden_size,
        "intermediate_size": int(read_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(read_field(reader, f"{arch}.block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        # Qwen2Config declares no head_dim field, but transformers' Qwen2
        # modeling reads one when present, so setting it everywhere is exact.
        "head_dim": head_dim,
        "max_position_embeddings": int(read_field(reader, f"{arch}.context_length")),
        "rms_norm_eps": float(read_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_parameters": _rope_parameters(reader, arch, head_dim, freq_factors),
        # llama.cpp drops output.weight when the head shares the embedding.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        **_special_token_ids(reader),
    }
    if arch in ("llama", "qwen3"):
        kwargs["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    return config_class(**kwargs)
