"""Stable identifiers of a model: the weights digest and the model fingerprint.

The fingerprint seeds the prefix-cache hash chain (``block_hash.root_block_hash``)
that several processes, possibly on different machines, must agree on, so
everything here is a pure function of file contents and config values, never
of paths, process state or Python's randomised ``hash``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

import torch
from transformers import PretrainedConfig

from services.engine.config import parse_dtype

# Bytes read from the start, middle and end of each weight file for the
# weights digest: enough to tell fine-tunes apart without hashing gigabytes.
_DIGEST_WINDOW = 1 << 20
# Config attribute under which ``load_checkpoint`` records the weights digest,
# so ``model_fingerprint(hf_config, dtype)`` covers the weights without the
# caller threading the digest through separately.
WEIGHTS_DIGEST_ATTR = "tandem_weights_digest"


def weights_digest(files: Iterable[str]) -> str:
    """sha256 over each weight file's name, size and sampled bytes.

    Only the basename enters the hash so the same checkpoint copied to another
    machine or folder digests identically.
    """
    digest = hashlib.sha256()
    for file_path in sorted(files, key=os.path.basename):
        size = os.path.getsize(file_path)
        digest.update(f"{os.path.basename(file_path)}\0{size}\0".encode())
        with open(file_path, "rb") as handle:
            for offset in sorted({0, max(0, size // 2 - _DIGEST_WINDOW // 2), max(0, size - _DIGEST_WINDOW)}):
                handle.seek(offset)
                digest.update(handle.read(_DIGEST_WINDOW))
    return digest.hexdigest()


def _rope_description(hf_config: PretrainedConfig) -> object:
    rope_parameters = getattr(hf_config, "rope_parameters", None)
    if rope_parameters is not None:
        return rope_parameters
    return {
        "rope_theta": getattr(hf_config, "rope_theta", None),
        "rope_scaling": getattr(hf_config, "rope_scaling", None),
    }


def model_fingerprint(
    hf_config: PretrainedConfig, dtype: torch.dtype | str, weights_digest: str | None = None
) -> str:
    """A stable id of "this model computing KV in this dtype".

    It seeds the prefix-cache hash chain that several processes share, so it is
    a sha256 over canonical JSON (sorted keys, no whitespace, plain types) of
    every config field that changes the K/V values computed for a token
    sequence, plus the weights digest: ``weights_digest`` when given, else the
    one ``load_checkpoint`` stored on the config (``WEIGHTS_DIGEST_ATTR``).
    """
    if weights_digest is None:
        weights_digest = getattr(hf_config, WEIGHTS_DIGEST_ATTR, None)
    num_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    architectures = getattr(hf_config, "architectures", None) or [hf_config.model_type]
    fields = {
        "version": "tandem.model_fingerprint.v1",
        "architecture": architectures[0],
        "num_hidden_layers": hf_config.num_hidden_layers,
        "hidden_size": hf_config.hidden_size,
        "intermediate_size": getattr(hf_config, "intermediate_size", None),
        "num_attention_heads": num_heads,
        "num_key_value_heads": getattr(hf_config, "num_key_value_heads", None) or num_heads,
        "head_dim": head_dim,
        "rope": _rope_description(hf_config),
        "rms_norm_eps": getattr(hf_config, "rms_norm_eps", None),
        "sliding_window": getattr(hf_config, "sliding_window", None),
        "layer_types": getattr(hf_config, "layer_types", None),
        "attention_bias": getattr(hf_config, "attention_bias", None),
        "vocab_size": hf_config.vocab_size,
        "tie_word_embeddings": getattr(hf_config, "tie_word_embeddings", None),
        "dtype": str(parse_dtype(dtype)).removeprefix("torch."),
        "weights_digest": weights_digest,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
