"""Small real tokenizers built offline, for tests that need a tokenizer but no download.

Two families cover the decoders tandem must handle:

* ``build_byte_level_tokenizer``: GPT-2 / Llama-3 style byte-level BPE. Its
  small vocabulary forces emoji, CJK and accented characters to be split into
  several byte tokens, so multi-byte UTF-8 characters straddle token boundaries.
* ``build_sentencepiece_tokenizer``: Llama-2 / Mistral style BPE over ``▁``-joined
  words with byte fallback (``<0xNN>`` tokens), where rare characters become
  one token per UTF-8 byte and the decoder strips the leading space of the text.

Both are trained once per process (a fraction of a second each) and cached.
"""

from __future__ import annotations

import functools
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

MULTILINGUAL_CORPUS: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you doing today? I'm fine, thanks.",
    "Héllo wörld, naïve café, déjà vu, señor, façade, Größe, straße.",
    "Ça va très bien, merci beaucoup. À bientôt !",
    "你好世界，今天天气很好。我们去公园散步吧。",
    "日本語のテキストを書きます。東京は大きな都市です。",
    "한국어 텍스트입니다. 안녕하세요 여러분.",
    "Привет, мир! Как дела? Всё хорошо.",
    "Emoji party 😀🎉👍🏽 rocket 🚀 family 👨‍👩‍👧 flag 🇫🇷 heart ❤️",
    "Math: ∑ x² ≤ ∞, π ≈ 3.14159, naïve ∂f/∂x.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "Tabs\tand  double  spaces   and\nnewlines\n\nare kept.",
]

# Special tokens named like the ones real checkpoints use, so tests read naturally.
BYTE_LEVEL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SENTENCEPIECE_SPECIALS = ["<unk>", "<s>", "</s>"]


# U+0250: past Latin-1 and Latin Extended-A/B (accented letters stay whole).
_FIRST_NON_LATIN = 0x250


def _training_text() -> list[str]:
    # Repeat so the trainer sees enough pair frequencies to merge common words.
    return MULTILINGUAL_CORPUS * 8


@functools.lru_cache(maxsize=1)
def build_byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 / Llama-3 style) trained on ``MULTILINGUAL_CORPUS``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        # Small on purpose: most non-ASCII characters stay split into byte pieces.
        vocab_size=420,
        special_tokens=BYTE_LEVEL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        additional_special_tokens=BYTE_LEVEL_SPECIALS[1:],
    )


def _sentencepiece_decoder(style: str) -> decoders.Decoder:
    if style == "llama":
        # The exact pipeline Llama-2 / Mistral tokenizer.json files ship.
        return decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    if style == "metaspace":
        # The newer form: byte fallback followed by a Metaspace decoder.
        return decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
        )
    raise ValueError(f"unknown sentencepiece decoder style {style!r}")


@functools.lru_cache(maxsize=1)
def _trained_sentencepiece_model() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a ▁-word BPE whose vocab also holds all 256 ``<0xNN>`` byte tokens."""
    trainer_tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=SENTENCEPIECE_SPECIALS, show_progress=False)
    # Train on Latin text only, so CJK, emoji, Cyrillic and symbols always go
    # through byte fallback. (``limit_alphabet`` cut the alphabet by frequency
    # instead, and broke ties differently from one process to the next: some
    # runs kept the emoji and CJK characters whole.)
    latin_only = ["".join(c for c in text if ord(c) < _FIRST_NON_LATIN) for text in _training_text()]
    trainer_tokenizer.train_from_iterator(latin_only, trainer)
    model_json = json.loads(trainer_tokenizer.to_str())["model"]
    trained_vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]

    # Layout like Llama-2: specials, then the 256 byte tokens, then learned pieces.
    vocab: dict[str, int] = {}
    for token in SENTENCEPIECE_SPECIALS:
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token, _ in sorted(trained_vocab.items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    return vocab, merges


def build_sentencepiece_tokenizer(decoder_style: str = "llama") -> PreTrainedTokenizerFast:
    """A SentencePiece-like BPE with byte fallback; ``decoder_style`` is "llama" or "metaspace"."""
    return _build_sentencepiece_tokenizer(decoder_style)


@functools.lru_cache(maxsize=2)
def _build_sentencepiece_tokenizer(decoder_style: str) -> PreTrainedTokenizerFast:
    vocab, merges = _trained_sentencepiece_model()
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = _sentencepiece_decoder(decoder_style)
    tokenizer.add_special_tokens(SENTENCEPIECE_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
