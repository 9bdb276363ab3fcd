"""Read a llama.cpp GGUF file as HF-named float32 tensors plus a HF config.

Every tensor is dequantized with the ``gguf`` package and renamed to the
parameter name transformers uses, so the model code has one weight layout to
handle whatever the checkpoint format. Tensors are produced one at a time from
the memory-mapped file, so the dequantized copy of the whole model never has to
coexist with a second one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from transformers import PretrainedConfig

from services.engine.errors import ModelLoadError
from services.engine.models.gguf_config import extra_eos_token_ids, gguf_architecture, hf_config_from_gguf

# Per-layer GGUF tensor stems -> HF module path inside ``model.layers.N``.
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Precomputed rope divisors: folded into the config's rope_parameters instead.
_ROPE_FREQS = "rope_freqs.weight"
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_NAME = re.compile(r"(\w+)\.(weight|bias)")

WeightIterator = Iterator[tuple[str, torch.Tensor]]


@dataclass
class GGUFContents:
    """What a GGUF file contributes to a ``LoadedCheckpoint``."""

    hf_config: PretrainedConfig
    architecture: str
    source_dtype: torch.dtype
    extra_eos_token_ids: tuple[int, ...]
    weights: Callable[[], WeightIterator]


def hf_tensor_name(gguf_name: str) -> str:
    """The transformers parameter name of a GGUF tensor, e.g.
    ``blk.3.attn_output.weight`` -> ``model.layers.3.self_attn.o_proj.weight``."""
    layer_match = _LAYER_NAME.fullmatch(gguf_name)
    if layer_match and layer_match.group(2) in _LAYER_TENSORS:
        index, stem, kind = layer_match.groups()
        return f"model.layers.{index}.{_LAYER_TENSORS[stem]}.{kind}"
    global_match = _GLOBAL_NAME.fullmatch(gguf_name)
    if global_match and global_match.group(1) in _GLOBAL_TENSORS:
        stem, kind = global_match.groups()
        return f"{_GLOBAL_TENSORS[stem]}.{kind}"
    raise ModelLoadError(f"GGUF tensor {gguf_name!r} has no known transformers counterpart")


def unpermute_qk_rows(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q_proj / k_proj output rows.

    HF's rotate-half RoPE pairs row ``i`` of a head with row ``i + head_dim/2``;
    llama.cpp's rope kernel pairs adjacent rows, so its converter interleaves the
    two halves of every head. Here each head's rows, viewed as
    ``(head_dim/2, 2)``, are transposed back to ``(2, head_dim/2)``. Works on
    weights (rows x cols) and biases (rows) alike.
    """
    rows = tensor.shape[0]
    half = rows // num_heads // 2
    if half * 2 * num_heads != rows:
        raise ModelLoadError(f"cannot split {rows} q/k rows into {num_heads} heads")
    grouped = tensor.reshape(num_heads, half, 2, *tensor.shape[1:])
    return grouped.transpose(1, 2).reshape(tensor.shape)


def _dequantized(reader_tensor) -> torch.Tensor:
    array = dequantize(reader_tensor.data, reader_tensor.tensor_type).astype(np.float32, copy=False)
    # F32 tensors come back as views of the read-only file mapping; copy those
    # so torch owns writable memory instead of aliasing the mapped file.
    if not array.flags.writeable:
        array = array.copy()
    # ReaderTensor.shape is in ggml order (fastest dimension first).
    numpy_shape = tuple(int(d) for d in reversed(reader_tensor.shape))
    return torch.from_numpy(array).reshape(numpy_shape)


def _source_dtype(reader: GGUFReader) -> torch.dtype:
    # A file whose matrices are all plain f16/bf16 is naturally run in that
    # dtype; quantized files dequantize to float32 and are reported as such.
    matrix_types = {t.tensor_type for t in reader.tensors if len(t.shape) > 1}
    if matrix_types == {GGMLQuantizationType.F16}:
        return torch.float16
    if matrix_types == {GGMLQuantizationType.BF16}:
        return torch.bfloat16
    return torch.float32


def open_gguf(path: str) -> GGUFContents:
    """Parse ``path``'s metadata and prepare a lazy iterator over its weights."""
    reader = GGUFReader(path)
    gguf_arch, hf_arch = gguf_architecture(reader)
    by_name = {t.name: t for t in reader.tensors}
    freq_factors = None
    if _ROPE_FREQS in by_name:
        freq_factors = _dequantized(by_name[_ROPE_FREQS]).double().numpy()
    hf_config = hf_config_from_gguf(reader, set(by_name), freq_factors)
    # Resolve every name up front so an unknown tensor fails the load before
    # any model memory is allocated.
    hf_names = {name: hf_tensor_name(name) for name in by_name if name != _ROPE_FREQS}
    # Only llama.cpp's llama converter permutes q/k; its qwen converters don't.
    heads_to_unpermute: dict[str, int] = {}
    if gguf_arch == "llama":
        heads_per_stem = {"attn_q": hf_config.num_attention_heads, "attn_k": hf_config.num_key_value_heads}
        for name in hf_names:
            layer_match = _LAYER_NAME.fullmatch(name)
            if layer_match and layer_match.group(2) in heads_per_stem:
                heads_to_unpermute[name] = heads_per_stem[layer_match.group(2)]

    def weights() -> WeightIterator:
        for gguf_name, hf_name in hf_names.items():
            tensor = _dequantized(by_name[gguf_name])
            if gguf_name in heads_to_unpermute:
                tensor = unpermute_qk_rows(tensor, heads_to_unpermute[gguf_name])
            yield hf_name, tensor

    return GGUFContents(
        hf_config=hf_config,
        architecture=hf_arch,
        source_dtype=_source_dtype(reader),
        extra_eos_token_ids=extra_eos_token_ids(reader),
        weights=weights,
    )
