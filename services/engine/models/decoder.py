"""One decoder-only transformer for the Llama family: Llama (2/3), Mistral, Qwen2, Qwen3.

They differ only in switches read from the HF config: q/k/v biases (Qwen2),
per-head q/k RMSNorm (Qwen3), an explicit head_dim, tied embeddings and the
RoPE variant. Projections are fused (q|k|v and gate|up) so each layer runs two
matrix products fewer; :meth:`DecoderLM.load_weights` stacks HF's separate
tensors into them. Every kernel call goes through the backend chosen once by
:mod:`kernels.dispatch`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from kernels.attention_metadata import AttentionMetadata
from services.engine.errors import UnsupportedArchitectureError
from services.engine.models.rope_table import build_rope_table

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)

KVCache = tuple[torch.Tensor, torch.Tensor]  # per layer: key and value [blocks, block, Hkv, D]


@dataclass(frozen=True)
class DecoderShape:
    """The architecture switches and sizes the decoder needs, read off a HF config."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    max_position_embeddings: int

    @classmethod
    def from_hf_config(cls, config: PretrainedConfig) -> DecoderShape:
        arch = (config.architectures or [""])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        return cls(
            architecture=arch,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            rms_norm_eps=config.rms_norm_eps,
            # Qwen2 always has q/k/v biases and never an o_proj bias.
            qkv_bias=attention_bias or arch == "Qwen2ForCausalLM",
            o_bias=attention_bias and arch != "Qwen2ForCausalLM",
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            max_position_embeddings=config.max_position_embeddings,
        )


class Linear(nn.Module):
    """``y = x W^T + b`` with uninitialised storage: weights always come from a checkpoint.

    After loading, :meth:`prepare` lets the backend keep a repacked copy of the
    weight (oneDNN's blocked layout on CPU) that its ``linear`` op uses.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, ops: ModuleType) -> None:
        super().__init__()
        self.ops = ops
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.prepared: torch.Tensor | None = None

    def prepare(self) -> None:
        self.prepared = self.ops.prepare_linear_weight(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight, self.bias, self.prepared)

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` for a ``[gate | up]`` weight; a backend may fuse it into the product."""
        return self.ops.linear_silu_and_mul(x, self.weight, self.bias, self.prepared)


def _norm_weight(size: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(size), requires_grad=False)


class Attention(nn.Module):
    def __init__(self, shape: DecoderShape, ops: ModuleType) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
        self.q_size = shape.num_heads * shape.head_dim
        self.kv_size = shape.num_kv_heads * shape.head_dim
        self.scale = shape.head_dim**-0.5
        self.eps = shape.rms_norm_eps
        self.qkv_proj = Linear(shape.hidden_size, self.q_size + 2 * self.kv_size, shape.qkv_bias, ops)
        self.o_proj = Linear(self.q_size, shape.hidden_size, shape.o_bias, ops)
        self.q_norm = _norm_weight(shape.head_dim) if shape.qk_norm else None
        self.k_norm = _norm_weight(shape.head_dim) if shape.qk_norm else None

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.ops.rms_norm(q, self.q_norm, self.eps)[0]
            k = self.ops.rms_norm(k, self.k_norm, self.eps)[0]
        # Attention reads K only from the cache, so only the rotated q comes back.
        q = self.ops.apply_rope_and_write_kv_cache(q, k, v, positions, rope[0], rope[1],
                                                   kv_cache[0], kv_cache[1], meta.slot_mapping)
        out = self.ops.paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.q_size))


class MLP(nn.Module):
    def __init__(self, shape: DecoderShape, ops: ModuleType) -> None:
        super().__init__()
        self.ops = ops
        self.gate_up_proj = Linear(shape.hidden_size, 2 * shape.intermediate_size, shape.mlp_bias, ops)
        self.down_proj = Linear(shape.intermediate_size, shape.hidden_size, shape.mlp_bias, ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.forward_silu_and_mul(x))


class DecoderLayer(nn.Module):
    def __init__(self, shape: DecoderShape, ops: ModuleType) -> None:
        super().__init__()
        self.ops = ops
        self.eps = shape.rms_norm_eps
        self.self_attn = Attention(shape, ops)
        self.mlp = MLP(shape, ops)
        self.input_layernorm = _norm_weight(shape.hidden_size)
        self.post_attention_layernorm = _norm_weight(shape.hidden_size)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so each norm fuses the add.
        normed, residual = self.ops.rms_norm(hidden, self.input_layernorm, self.eps, residual)
        hidden = self.self_attn(normed, positions, rope, kv_cache, meta)
        normed, residual = self.ops.rms_norm(hidden, self.post_attention_layernorm, self.eps, residual)
        return self.mlp(normed), residual


class DecoderLM(nn.Module):
    def __init__(self, config: PretrainedConfig, ops: ModuleType, max_positions: int) -> None:
        super().__init__()
        self.shape = shape = DecoderShape.from_hf_config(config)
        self.ops = ops
        self.embed_tokens = nn.Parameter(torch.empty(shape.vocab_size, shape.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(shape, ops) for _ in range(shape.num_layers))
        self.norm = _norm_weight(shape.hidden_size)
        self.lm_head = Linear(shape.hidden_size, shape.vocab_size, False, ops)
        if shape.tie_word_embeddings:
            # One tensor under two names; named_parameters() lists it once.
            self.lm_head.weight = self.embed_tokens
        self._config = config
        self._max_positions = max_positions
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def build_rope(self, device: torch.device) -> None:
        self.rope = build_rope_table(self._config, self.shape.head_dim, self._max_positions, device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] of the step's tokens (after the final norm)."""
        assert self.rope is not None, "call build_rope() after moving the model"
        hidden = F.embedding(input_ids, self.embed_tokens)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer(hidden, residual, positions, self.rope, kv_cache, meta)
        return self.ops.rms_norm(hidden, self.norm, self.shape.rms_norm_eps, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # -- weights ---------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, stacking q/k/v and gate/up into the fused projections."""
        from services.engine.models.weight_map import WeightMapper

        WeightMapper(self).load(weights)
        self._prepare_linears()

    def init_dummy_weights(self, std: float = 0.02, seed: int = 0) -> None:
        """Random weights where they live (norm gains 1), for benchmarks of real shapes."""
        generator = torch.Generator(device=self.embed_tokens.device).manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith(("layernorm", "norm")):
                param.data.fill_(1.0)
            else:
                param.data.normal_(0.0, std, generator=generator)
        self._prepare_linears()

    def _prepare_linears(self) -> None:
        for module in self.modules():
            if isinstance(module, Linear):
                module.prepare()
