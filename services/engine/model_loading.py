"""From an ``EngineConfig`` to a ready model, tokenizer and the facts the engine needs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from kernels.dispatch import select_backend
from services.engine.config import EngineConfig, parse_dtype
from services.engine.models.checkpoint import LoadedCheckpoint, load_checkpoint, model_fingerprint
from services.engine.models.decoder import DecoderLM, DecoderShape
from services.engine.models.default_model import default_model_path
from services.engine.sampling_params import SamplingParams
from services.engine.tokenizer import eos_token_ids, load_tokenizer


@dataclasses.dataclass
class LoadedModel:
    architecture: str
    model: DecoderLM
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    fingerprint: str
    vocab_size: int
    eos_token_id: int | None
    # Further ids that end generation like EOS (e.g. Llama-3's <|eot_id|>).
    extra_eos_token_ids: tuple[int, ...] = ()

    def with_extra_stop_tokens(self, params: SamplingParams) -> SamplingParams:
        """Params that also stop on the model's secondary EOS ids, unless EOS is ignored."""
        extra = [t for t in self.extra_eos_token_ids if t not in params.stop_token_ids]
        if params.ignore_eos or not extra:
            return params
        return dataclasses.replace(params, stop_token_ids=params.stop_token_ids + extra)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _working_dtype(requested: str, source: torch.dtype, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return parse_dtype(requested)
    if device.type == "cpu":
        return torch.float32
    return source if source in (torch.bfloat16, torch.float16) else torch.bfloat16


@dataclasses.dataclass
class _DummyCheckpoint:
    """A config.json (and tokenizer) without weights: random weights are drawn on the device."""

    hf_config: PretrainedConfig
    architecture: str
    tokenizer_source: str
    source_dtype: torch.dtype = torch.bfloat16
    generation_eos_token_ids: tuple[int, ...] = ()

    def fingerprint(self, dtype: torch.dtype) -> str:
        return model_fingerprint(self.hf_config, dtype, "dummy-weights")


def _open(path: str, load_format: str) -> LoadedCheckpoint | _DummyCheckpoint:
    if load_format == "auto":
        return load_checkpoint(path)
    if load_format != "dummy":
        raise ValueError(f"load_format must be 'auto' or 'dummy', got {load_format!r}")
    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    return _DummyCheckpoint(hf_config, DecoderShape.from_hf_config(hf_config).architecture, path)


def load_model(config: EngineConfig) -> LoadedModel:
    path = config.model or default_model_path()
    checkpoint = _open(path, config.load_format)
    hf_config = checkpoint.hf_config
    device = config.resolved_device()
    dtype = _working_dtype(config.dtype, checkpoint.source_dtype, device)
    limit = hf_config.max_position_embeddings
    max_model_len = config.max_model_len or limit
    if max_model_len > limit:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's context ({limit})")
    sliding_window = getattr(hf_config, "sliding_window", None)
    if sliding_window and getattr(hf_config, "use_sliding_window", True) and max_model_len > sliding_window:
        # Within the window, windowed attention equals full attention.
        max_model_len = sliding_window

    with torch.device(device), _default_dtype(dtype):
        model = DecoderLM(hf_config, select_backend(device), max_positions=max_model_len)
    if isinstance(checkpoint, _DummyCheckpoint):
        model.init_dummy_weights()
    else:
        model.load_weights(checkpoint.iter_weights())
    model.build_rope(device)
    model.eval()

    tokenizer = load_tokenizer(checkpoint.tokenizer_source)
    eos_ids = eos_token_ids(tokenizer, hf_config, checkpoint.generation_eos_token_ids)
    primary = tokenizer.eos_token_id if tokenizer.eos_token_id in eos_ids else (eos_ids[0] if eos_ids else None)
    return LoadedModel(
        architecture=checkpoint.architecture,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        max_model_len=max_model_len,
        fingerprint=checkpoint.fingerprint(dtype),
        vocab_size=hf_config.vocab_size,
        eos_token_id=primary,
        extra_eos_token_ids=tuple(t for t in eos_ids if t != primary),
    )
