"""Tokenizer loading (HF folders and GGUF files), chat templates and EOS ids.

Converting a GGUF vocabulary into a fast tokenizer takes seconds (SmolLM2's
49k tokens: ~5 s), so the converted tokenizer is saved once as an ordinary HF
tokenizer folder and later loads read that folder instead (~0.2 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from services.engine.errors import InvalidRequestError, ModelFilesMissingError

logger = logging.getLogger(__name__)

# Bump when the cached folder's layout or the conversion recipe changes, so old
# cache entries are ignored instead of misread.
_CACHE_FORMAT = 1

# Inputs that exercise special tokens, byte fallback, whitespace runs and
# multi-byte characters; a cached tokenizer must treat them exactly like a
# freshly converted one before it is trusted.
_PROBE_TEXTS = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs and\n\nnewlines  ",
    "naïve café, 中文, 日本語, emoji 🤖🎉",
    "def f(x):\n    return x ** 2  # 1234567890",
    "",
)
_PROBE_CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Count to three."},
]


def tokenizer_cache_root() -> Path:
    """Where converted GGUF tokenizers live: ``$TANDEM_CACHE_DIR/tokenizers``,
    or ``~/.cache/tandem/tokenizers`` when the variable is unset."""
    root = os.environ.get("TANDEM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tandem")
    return Path(root) / "tokenizers"


def _gguf_cache_key(gguf_path: str) -> str:
    # Path, size and mtime identify the file without hashing its ~100 MB; the
    # library versions are included because they decide the conversion result.
    stat = os.stat(gguf_path)
    identity = [
        _CACHE_FORMAT,
        os.path.realpath(gguf_path),
        stat.st_size,
        stat.st_mtime_ns,
        transformers.__version__,
        tokenizers.__version__,
    ]
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()


def _behaviour(tokenizer: PreTrainedTokenizerBase) -> dict:
    """Everything the engine observes of a tokenizer, for comparing two of them."""
    encoded = [
        (tokenizer.encode(text, add_special_tokens=True), tokenizer.encode(text, add_special_tokens=False))
        for text in _PROBE_TEXTS
    ]
    decoded = [(tokenizer.decode(ids), tokenizer.decode(ids, skip_special_tokens=True)) for ids, _ in encoded]
    chat = None
    if tokenizer.chat_template is not None:
        try:
            chat = render_chat_template(tokenizer, _PROBE_CONVERSATION)
        except InvalidRequestError as error:
            chat = f"error: {error}"
    return {
        "encoded": encoded,
        "decoded": decoded,
        "vocab_size": len(tokenizer),
        "special_tokens": tokenizer.special_tokens_map,
        "special_ids": sorted(tokenizer.all_special_ids),
        "ids": [
            tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id
        ],
        "chat_template": tokenizer.chat_template,
        "chat": chat,
    }


def _store_in_cache(tokenizer: PreTrainedTokenizerBase, cache_dir: Path) -> PreTrainedTokenizerBase | None:
    """Save ``tokenizer`` to ``cache_dir`` atomically and return the reloaded copy,
    or ``None`` when it cannot be cached faithfully."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp folder and rename it into place: a reader (or a
    # concurrent server start) sees either no entry or a complete one.
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent))
    try:
        tokenizer.save_pretrained(str(staging))
        reloaded = AutoTokenizer.from_pretrained(str(staging), local_files_only=True)
        if _behaviour(reloaded) != _behaviour(tokenizer):
            logger.warning("converted tokenizer does not round-trip through save_pretrained; not caching it")
            return None
        try:
            os.rename(staging, cache_dir)
        except OSError:
            # Another process finished the same conversion first; keep theirs.
            if not cache_dir.is_dir():
                raise
        return AutoTokenizer.from_pretrained(str(cache_dir), local_files_only=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_gguf_tokenizer(gguf_path: str) -> PreTrainedTokenizerBase:
    cache_dir = tokenizer_cache_root() / _gguf_cache_key(gguf_path)
    if cache_dir.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(cache_dir), local_files_only=True)
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable tokenizer cache %s: %s", cache_dir, error)
            shutil.rmtree(cache_dir, ignore_errors=True)
    folder, file_name = os.path.split(os.path.abspath(gguf_path))
    converted = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    try:
        cached = _store_in_cache(converted, cache_dir)
    except OSError as error:
        logger.warning("cannot cache the converted tokenizer under %s: %s", cache_dir, error)
        cached = None
    # Prefer the reloaded copy so the first run behaves exactly like later ones.
    return cached if cached is not None else converted


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a HF checkpoint folder or of a ``.gguf`` file."""
    if os.path.isdir(path):
        try:
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except OSError as error:
            raise ModelFilesMissingError(f"{path}: cannot load a tokenizer: {error}") from error
    if path.endswith(".gguf") and os.path.isfile(path):
        return _load_gguf_tokenizer(path)
    raise ModelFilesMissingError(f"tokenizer source {path!r} is neither a checkpoint folder nor a .gguf file")


def _validate_messages(messages: object) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise InvalidRequestError(
            f"messages must be a list of {{'role', 'content'}} objects, got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidRequestError("messages must contain at least one message")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"messages[{index}] must be an object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(f"messages[{index}].role must be a non-empty string")
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{index}].content must be a string")
    return [dict(message) for message in messages]


def render_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
) -> str:
    """The conversation rendered by the tokenizer's chat template, as text."""
    if tokenizer.chat_template is None:
        raise InvalidRequestError("this model's tokenizer has no chat template; send a plain prompt instead")
    conversation = _validate_messages(messages)
    try:
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except jinja2.TemplateError as error:
        # Templates reject conversations they cannot express (e.g. roles that do
        # not alternate) by raising from inside Jinja.
        raise InvalidRequestError(f"chat template rejected the messages: {error}") from error


def apply_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
) -> list[int]:
    """The conversation rendered by the chat template, as prompt token ids."""
    text = render_chat_template(tokenizer, messages, add_generation_prompt)
    # The template writes any BOS itself; letting the tokenizer add another
    # would double it.
    return tokenizer.encode(text, add_special_tokens=False)


def _as_ids(value: object) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(item) for item in value]  # type: ignore[union-attr]


def eos_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    hf_config: PretrainedConfig,
    extra: Iterable[int] = (),
) -> tuple[int, ...]:
    """Every token id that ends generation, without duplicates, in priority order.

    The config's ``eos_token_id`` (an int or a list) comes first, then the
    tokenizer's eos, then ``extra`` (``LoadedCheckpoint.generation_eos_token_ids``:
    generation_config.json's list, GGUF end-of-turn ids).
    """
    ordered = (
        _as_ids(getattr(hf_config, "eos_token_id", None))
        + _as_ids(tokenizer.eos_token_id)
        + _as_ids(list(extra))
    )
    return tuple(dict.fromkeys(ordered))
