"""IncrementalDetokenizer against full decodes, on byte-level and SentencePiece-style tokenizers."""

from __future__ import annotations

import random

import pytest
from transformers import PreTrainedTokenizerFast

from services.engine.detokenizer import IncrementalDetokenizer
from tests.tokenizer_fixtures import (
    MULTILINGUAL_CORPUS,
    build_byte_level_tokenizer,
    build_sentencepiece_tokenizer,
)

REPLACEMENT_CHAR = "\ufffd"
TOKENIZER_KINDS = ["byte_level", "sentencepiece_llama", "sentencepiece_metaspace"]


def get_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    if kind == "byte_level":
        return build_byte_level_tokenizer()
    return build_sentencepiece_tokenizer(kind.removeprefix("sentencepiece_"))


def detokenize(
    tokenizer: PreTrainedTokenizerFast, prompt: list[int], output: list[int], skip_special_tokens: bool = True
) -> list[str]:
    """Deltas for ``output`` pushed one by one, the flush included as the last one."""
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens)
    deltas = [detokenizer.push(token_id) for token_id in output]
    deltas.append(detokenizer.flush())
    assert detokenizer.text == "".join(deltas)
    return deltas


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def settled_prompt_text(tokenizer: PreTrainedTokenizerFast, prompt: list[int], skip: bool) -> str:
    """The prompt's text minus any character it leaves unfinished (which the output completes).

    Byte-fallback decoders spoil a whole byte run when it ends mid-character, so
    back off to the last token boundary that decodes cleanly; byte-level
    decoders spoil only the unfinished bytes, so strip the trailing U+FFFD.
    Whichever is longer is the settled text.
    """
    full = tokenizer.decode(prompt, skip_special_tokens=skip)
    cut = full
    for end in range(len(prompt), -1, -1):
        cut = tokenizer.decode(prompt[:end], skip_special_tokens=skip)
        if not cut.endswith(REPLACEMENT_CHAR):
            break
    return max(cut, full.rstrip(REPLACEMENT_CHAR), key=len)


def expected_output_text(
    tokenizer: PreTrainedTokenizerFast, prompt: list[int], output: list[int], skip: bool
) -> str:
    full = tokenizer.decode(prompt + output, skip_special_tokens=skip)
    prefix = settled_prompt_text(tokenizer, prompt, skip)
    assert full.startswith(prefix)
    return full[len(prefix) :]


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_texts_split_anywhere_match_full_decode(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    rng = random.Random(0)
    for trial in range(300):
        text = " ".join(rng.sample(MULTILINGUAL_CORPUS, 2))
        ids = encode(tokenizer, text)
        split = rng.randrange(len(ids))  # prompt may end mid-character
        prompt, output = ids[:split], ids[split:]
        deltas = detokenize(tokenizer, prompt, output)
        assert "".join(deltas) == expected_output_text(tokenizer, prompt, output, True), (prompt, output)
        assert not any(REPLACEMENT_CHAR in delta for delta in deltas)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_without_prompt_matches_decode_of_output(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    for text in MULTILINGUAL_CORPUS:
        ids = encode(tokenizer, text)
        assert "".join(detokenize(tokenizer, [], ids)) == tokenizer.decode(ids) == text


def test_multibyte_characters_really_split_across_tokens() -> None:
    # Guard for the fixtures: the tests above only mean something if they do.
    for kind in TOKENIZER_KINDS:
        tokenizer = get_tokenizer(kind)
        deltas = detokenize(tokenizer, [], encode(tokenizer, "😀 你好 café"))
        assert "" in deltas[:-1], kind


def test_random_ids_byte_level_match_full_decode() -> None:
    tokenizer = build_byte_level_tokenizer()
    rng = random.Random(1)
    vocab_size = len(tokenizer)
    for trial in range(400):
        skip = rng.random() < 0.5
        prompt = encode(tokenizer, rng.choice(MULTILINGUAL_CORPUS)) if trial % 3 else []
        output = [rng.randrange(vocab_size) for _ in range(rng.randrange(1, 25))]
        got = "".join(detokenize(tokenizer, prompt, output, skip))
        assert got == expected_output_text(tokenizer, prompt, output, skip), (prompt, output, skip)
        if not prompt:
            assert got == tokenizer.decode(output, skip_special_tokens=skip)


@pytest.mark.parametrize("kind", ["sentencepiece_llama", "sentencepiece_metaspace"])
def test_random_ids_sentencepiece_match_full_decode(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    rng = random.Random(2)
    # Byte tokens at random form invalid runs that byte fallback rewrites
    # after the fact; valid byte runs are covered by the text tests.
    pieces = [i for i in range(len(tokenizer)) if not tokenizer.convert_ids_to_tokens(i).startswith("<0x")]
    for trial in range(400):
        skip = rng.random() < 0.5
        prompt = (
            [tokenizer.bos_token_id] + encode(tokenizer, rng.choice(MULTILINGUAL_CORPUS)) if trial % 3 else []
        )
        output = [rng.choice(pieces) for _ in range(rng.randrange(1, 25))]
        got = "".join(detokenize(tokenizer, prompt, output, skip))
        assert got == expected_output_text(tokenizer, prompt, output, skip), (prompt, output, skip)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_garbage_ids_never_raise(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    rng = random.Random(3)
    for _ in range(300):
        ids = [rng.randrange(len(tokenizer)) for _ in range(30)]
        detokenize(tokenizer, ids[:8], ids[8:], skip_special_tokens=rng.random() < 0.5)


@pytest.mark.parametrize("kind", ["sentencepiece_llama", "sentencepiece_metaspace"])
def test_sentencepiece_first_output_token_spacing(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    bos = tokenizer.bos_token_id
    brown = encode(tokenizer, "Hello brown")[1:]
    assert tokenizer.convert_ids_to_tokens(brown) == ["▁brown"]
    # After a word, "▁brown" is " brown"; at the very start, "brown", as decode() has it.
    assert "".join(detokenize(tokenizer, [bos] + encode(tokenizer, "Hello"), brown)) == " brown"
    assert "".join(detokenize(tokenizer, [bos], brown)) == "brown" == tokenizer.decode(brown)
    assert "".join(detokenize(tokenizer, [bos], brown, skip_special_tokens=False)) == " brown"
    assert detokenize(tokenizer, encode(tokenizer, "Hello"), encode(tokenizer, "Hello world")[1:])[0] == " w"


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_special_tokens_skipped_or_kept(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    eos = tokenizer.eos_token_id
    output = encode(tokenizer, "Ça va") + [eos]
    prompt = encode(tokenizer, "Hello")
    kept = "".join(detokenize(tokenizer, prompt, output, skip_special_tokens=False))
    skipped = "".join(detokenize(tokenizer, prompt, output, skip_special_tokens=True))
    assert kept.endswith(tokenizer.eos_token)
    assert skipped == kept.removesuffix(tokenizer.eos_token)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_unfinished_character_is_held_then_flushed(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    # A 4-byte character absent from the training corpus, so no merge can make
    # it one token: it always arrives as several byte tokens.
    ids = encode(tokenizer, "ok 𝄞")
    assert len(ids) >= 3
    detokenizer = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
    for token_id in ids[:-1]:
        detokenizer.push(token_id)
    assert REPLACEMENT_CHAR not in detokenizer.text and "𝄞" not in detokenizer.text
    assert detokenizer.flush().endswith(REPLACEMENT_CHAR)
    assert detokenizer.flush() == ""


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_prompt_ending_mid_character_emits_it_whole(kind: str) -> None:
    tokenizer = get_tokenizer(kind)
    ids = encode(tokenizer, "你好😀")
    for split in range(1, len(ids)):
        prompt, output = ids[:split], ids[split:]
        deltas = detokenize(tokenizer, prompt, output)
        text = "".join(deltas)
        assert text == expected_output_text(tokenizer, prompt, output, True)
        assert REPLACEMENT_CHAR not in text and text.endswith("😀")


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_tokens_without_text_do_not_grow_the_window(kind: str) -> None:
    # A model can emit long runs of ids that decode to nothing: skipped special
    # tokens, or ids past the tokenizer's vocabulary (embedding tables are often
    # padded). Each push decodes the window, so it must stay short through them.
    tokenizer = get_tokenizer(kind)
    past_vocab = len(tokenizer) + 5
    prompt = encode(tokenizer, "Hello")
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=True)
    window_before = len(detokenizer._window)
    deltas = [detokenizer.push(token_id) for token_id in [tokenizer.eos_token_id, past_vocab] * 500]
    assert deltas == [""] * 1000
    assert len(detokenizer._window) == window_before
    world = encode(tokenizer, " world")
    text = "".join(detokenizer.push(token_id) for token_id in world) + detokenizer.flush()
    assert text == expected_output_text(tokenizer, prompt, world, skip=True)
