"""Open a model checkpoint (HF folder or GGUF file) as config + lazy HF-named weights.

The model code never sees the on-disk format: both kinds of checkpoint come
back as a transformers config and an iterator of ``(hf_parameter_name,
tensor)`` pairs, read one tensor at a time so loading a large sharded model
needs memory for the model plus one tensor, not two copies of the model.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from services.engine.errors import ModelFilesMissingError, UnsupportedArchitectureError
from services.engine.models.fingerprint import WEIGHTS_DIGEST_ATTR, model_fingerprint, weights_digest
from services.engine.models.gguf_checkpoint import open_gguf

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "LoadedCheckpoint",
    "cast_weights",
    "load_checkpoint",
    "model_fingerprint",
    "weights_digest",
]

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)

WeightIterator = Iterator[tuple[str, torch.Tensor]]

# For configs written without an ``architectures`` list.
_ARCHITECTURE_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


@dataclass
class LoadedCheckpoint:
    """A checkpoint opened but not yet materialised.

    ``weights()`` starts a fresh pass over the tensors (HF names, source dtype,
    on CPU); ``lm_head.weight`` is absent when ``hf_config.tie_word_embeddings``.
    ``tokenizer_source`` is the path to hand to ``load_tokenizer``.
    """

    path: str
    format: str  # "hf" or "gguf"
    hf_config: PretrainedConfig
    architecture: str
    weights: Callable[[], WeightIterator]
    source_dtype: torch.dtype
    tokenizer_source: str
    # sha256 over sampled bytes of the weight files; also stored on hf_config
    # (fingerprint.WEIGHTS_DIGEST_ATTR) so model_fingerprint(hf_config, dtype)
    # tells different weights apart.
    weights_digest: str
    # Stop ids the checkpoint declares outside config.eos_token_id
    # (generation_config.json, GGUF end-of-turn tokens).
    generation_eos_token_ids: tuple[int, ...] = field(default=())

    def iter_weights(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> WeightIterator:
        """The weights converted to the working dtype and device, one at a time."""
        return cast_weights(self.weights(), dtype, device)

    def fingerprint(self, dtype: torch.dtype | str) -> str:
        """``model_fingerprint`` of this checkpoint's config and weights in ``dtype``."""
        return model_fingerprint(self.hf_config, dtype, self.weights_digest)


def cast_weights(
    weights: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> WeightIterator:
    """Move floating tensors to ``dtype`` and ``device``; integer tensors keep their dtype."""
    for name, tensor in weights:
        target_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        # Narrow before copying to the device and widen after, so the host to
        # device transfer always moves the smaller representation.
        if target_dtype.itemsize < tensor.dtype.itemsize:
            tensor = tensor.to(dtype=target_dtype).to(device=device)
        else:
            tensor = tensor.to(device=device).to(dtype=target_dtype)
        yield name, tensor


def load_checkpoint(path: str) -> LoadedCheckpoint:
    """Open a HF checkpoint folder or a ``.gguf`` file."""
    if os.path.isdir(path):
        return _load_hf_folder(path)
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ModelFilesMissingError(f"GGUF file {path!r} does not exist")
        return _load_gguf(path)
    raise ModelFilesMissingError(f"model path {path!r} is neither a checkpoint folder nor a .gguf file")


def _record_digest(hf_config: PretrainedConfig, files: list[str]) -> str:
    digest = weights_digest(files)
    setattr(hf_config, WEIGHTS_DIGEST_ATTR, digest)
    return digest


@dataclass(frozen=True)
class ModelMetadata:
    """What a process that never runs the model needs (the router, the gateway)."""

    hf_config: PretrainedConfig
    tokenizer_source: str


def load_model_metadata(path: str) -> ModelMetadata:
    """Config and tokenizer location, without requiring weight files (dummy-weight folders work)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelFilesMissingError(f"{path}: config.json is missing")
        return ModelMetadata(AutoConfig.from_pretrained(path, local_files_only=True), path)
    checkpoint = load_checkpoint(path)
    return ModelMetadata(checkpoint.hf_config, checkpoint.tokenizer_source)


def _load_gguf(path: str) -> LoadedCheckpoint:
    contents = open_gguf(path)
    return LoadedCheckpoint(
        path=path,
        format="gguf",
        hf_config=contents.hf_config,
        architecture=contents.architecture,
        weights=contents.weights,
        source_dtype=contents.source_dtype,
        tokenizer_source=path,
        weights_digest=_record_digest(contents.hf_config, [path]),
        generation_eos_token_ids=contents.extra_eos_token_ids,
    )


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _check_architecture(folder: str, raw_config: dict) -> str:
    architectures = raw_config.get("architectures") or []
    if not architectures and raw_config.get("model_type") in _ARCHITECTURE_BY_MODEL_TYPE:
        return _ARCHITECTURE_BY_MODEL_TYPE[raw_config["model_type"]]
    for architecture in architectures:
        if architecture in SUPPORTED_ARCHITECTURES:
            return architecture
    named = architectures[0] if architectures else f"<none; model_type={raw_config.get('model_type')!r}>"
    raise UnsupportedArchitectureError(
        f"{folder}: architecture {named} is not supported; supported architectures: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _weight_files(folder: str) -> list[str]:
    index_path = os.path.join(folder, _SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        shard_names = sorted(set(_read_json(index_path)["weight_map"].values()))
        missing = [name for name in shard_names if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise ModelFilesMissingError(
                f"{folder}: shards listed in {_SAFETENSORS_INDEX} are missing: {missing}"
            )
        return [os.path.join(folder, name) for name in shard_names]
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    # Some repositories also ship Mistral's own consolidated.safetensors, whose
    # tensor names are not HF's; HF-format files always come with an index.
    files = sorted(
        f for f in glob.glob(os.path.join(folder, "*.safetensors"))
        if not os.path.basename(f).startswith("consolidated")
    )
    if files:
        return files
    hint = " (only PyTorch .bin weights found; convert them to safetensors)" if glob.glob(
        os.path.join(folder, "*.bin")
    ) else ""
    raise ModelFilesMissingError(f"{folder}: no *.safetensors weight files{hint}")


def _safetensors_dtype(file_path: str) -> torch.dtype:
    # The header is a length-prefixed JSON table; reading it avoids touching
    # any tensor data just to learn the checkpoint's dtype.
    with open(file_path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_len))
    counts = Counter(
        entry["dtype"]
        for name, entry in header.items()
        if name != "__metadata__" and entry["dtype"] in _SAFETENSORS_DTYPES
    )
    if not counts:
        return torch.float32
    return _SAFETENSORS_DTYPES[counts.most_common(1)[0][0]]


def _load_hf_folder(folder: str) -> LoadedCheckpoint:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ModelFilesMissingError(f"{folder}: config.json is missing")
    architecture = _check_architecture(folder, _read_json(config_path))
    files = _weight_files(folder)
    if not any(os.path.isfile(os.path.join(folder, name)) for name in _TOKENIZER_FILES):
        raise ModelFilesMissingError(
            f"{folder}: no tokenizer file (expected one of {', '.join(_TOKENIZER_FILES)})"
        )
    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    hf_config.architectures = [architecture]
    skip_lm_head = bool(getattr(hf_config, "tie_word_embeddings", False))

    def weights() -> WeightIterator:
        for file_path in files:
            with safe_open(file_path, framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    # Rotary inverse frequencies are recomputed from the config,
                    # and a tied head is the embedding itself.
                    if name.endswith("rotary_emb.inv_freq") or (skip_lm_head and name == "lm_head.weight"):
                        continue
                    yield name, handle.get_tensor(name)

    generation_eos: tuple[int, ...] = ()
    generation_config_path = os.path.join(folder, "generation_config.json")
    if os.path.isfile(generation_config_path):
        eos = _read_json(generation_config_path).get("eos_token_id")
        generation_eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))

    return LoadedCheckpoint(
        path=folder,
        format="hf",
        hf_config=hf_config,
        architecture=architecture,
        weights=weights,
        source_dtype=_safetensors_dtype(files[0]),
        tokenizer_source=folder,
        weights_digest=_record_digest(hf_config, files),
        generation_eos_token_ids=generation_eos,
    )
