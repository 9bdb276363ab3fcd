"""Maps HuggingFace parameter names onto the decoder's (fused) parameters."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from services.engine.errors import ModelLoadError

if TYPE_CHECKING:
    from services.engine.models.decoder import DecoderLM

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Tensors HF checkpoints may carry that the decoder recomputes or never needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightMapper:
    """Resolves each HF tensor name to a destination slice and checks completeness."""

    def __init__(self, model: DecoderLM) -> None:
        self.model = model
        shape = model.shape
        q = shape.num_heads * shape.head_dim
        kv = shape.num_kv_heads * shape.head_dim
        inter = shape.intermediate_size
        # (fused parameter, row slice) for each HF sub-module name inside a layer.
        self._stacked = {
            "self_attn.q_proj": ("self_attn.qkv_proj", slice(0, q)),
            "self_attn.k_proj": ("self_attn.qkv_proj", slice(q, q + kv)),
            "self_attn.v_proj": ("self_attn.qkv_proj", slice(q + kv, q + 2 * kv)),
            "mlp.gate_proj": ("mlp.gate_up_proj", slice(0, inter)),
            "mlp.up_proj": ("mlp.gate_up_proj", slice(inter, 2 * inter)),
        }
        self._params = dict(model.named_parameters())
        self._filled: dict[str, int] = {}

    def _destination(self, name: str) -> tuple[str, slice | None] | None:
        if name.endswith(_IGNORED_SUFFIXES):
            return None
        if name == "model.embed_tokens.weight":
            return "embed_tokens", None
        if name == "model.norm.weight":
            return "norm", None
        if name == "lm_head.weight":
            # Tied checkpoints sometimes still carry a copy of the embedding.
            return None if self.model.shape.tie_word_embeddings else ("lm_head.weight", None)
        match = _LAYER.match(name)
        if match is None:
            raise ModelLoadError(f"unexpected tensor {name!r} in checkpoint")
        layer, rest = match.group(1), match.group(2)
        module, _, kind = rest.rpartition(".")
        if module in self._stacked:
            fused, rows = self._stacked[module]
            return f"layers.{layer}.{fused}.{kind}", rows
        if module in ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"):
            return f"layers.{layer}.{module}", None
        return f"layers.{layer}.{rest}", None

    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in weights:
            dest = self._destination(name)
            if dest is None:
                continue
            param_name, rows = dest
            param = self._params.get(param_name)
            if param is None:
                raise ModelLoadError(f"checkpoint tensor {name!r} has no place in the model ({param_name})")
            target = param.data if rows is None else param.data[rows]
            if tuple(target.shape) != tuple(tensor.shape):
                raise ModelLoadError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, model expects {tuple(target.shape)}"
                )
            target.copy_(tensor)
            self._filled[param_name] = self._filled.get(param_name, 0) + target.numel()
        missing = [n for n, p in self._params.items() if self._filled.get(n, 0) != p.numel()]
        if missing:
            raise ModelLoadError(f"checkpoint is missing tensors for: {', '.join(missing[:8])}")
