"""Tokenizer loading (GGUF conversion cache, HF folders), chat templates and EOS ids."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

from services.engine import tokenizer as tokenizer_module
from services.engine.errors import InvalidRequestError, ModelFilesMissingError
from services.engine.models.default_model import default_model_path
from services.engine.tokenizer import (
    apply_chat_template,
    eos_token_ids,
    load_tokenizer,
    render_chat_template,
    tokenizer_cache_root,
)
from tests.fixtures.tiny_models import CHATML_TEMPLATE, train_tiny_tokenizer

TEXTS = [
    "Hello world!",
    "  leading spaces\n\ttabs and trailing  ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "Émoji 🤖, accents déjà vu, 中文, Привет",
    "def f(x):\n    return x * 2\n",
    "",
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
]


@pytest.fixture(scope="module")
def smollm2_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The SmolLM2 GGUF tokenizer converted by transformers, by a cold tandem
    load (empty cache) and by a warm one, with the load times."""
    path = default_model_path()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANDEM_CACHE_DIR", str(tmp_path_factory.mktemp("tandem_cache")))
        folder, name = os.path.split(path)
        reference = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        started = time.perf_counter()
        cold = load_tokenizer(path)
        cold_seconds = time.perf_counter() - started
        started = time.perf_counter()
        warm = load_tokenizer(path)
        warm_seconds = time.perf_counter() - started
        yield {
            "reference": reference, "cold": cold, "warm": warm, "cold_s": cold_seconds,
            "warm_s": warm_seconds, "cache_root": tokenizer_cache_root(),
        }


def _assert_same_tokenizer(ours: PreTrainedTokenizerBase, reference: PreTrainedTokenizerBase) -> None:
    for text in TEXTS:
        for add_special in (True, False):
            ids = reference.encode(text, add_special_tokens=add_special)
            assert ours.encode(text, add_special_tokens=add_special) == ids, text
            for skip in (True, False):
                expected = reference.decode(ids, skip_special_tokens=skip)
                assert ours.decode(ids, skip_special_tokens=skip) == expected
    assert len(ours) == len(reference)
    assert ours.get_vocab() == reference.get_vocab()
    assert ours.special_tokens_map == reference.special_tokens_map
    assert sorted(ours.all_special_ids) == sorted(reference.all_special_ids)
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"):
        assert getattr(ours, attribute) == getattr(reference, attribute), attribute
    for generation_prompt in (True, False):
        expected = reference.apply_chat_template(
            CONVERSATION, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
        )
        assert apply_chat_template(ours, CONVERSATION, generation_prompt) == list(expected)
        assert render_chat_template(ours, CONVERSATION, generation_prompt) == reference.apply_chat_template(
            CONVERSATION, tokenize=False, add_generation_prompt=generation_prompt
        )


def test_cached_gguf_tokenizer_matches_fresh_conversion(smollm2_tokenizers: dict) -> None:
    reference = smollm2_tokenizers["reference"]
    _assert_same_tokenizer(smollm2_tokenizers["cold"], reference)
    _assert_same_tokenizer(smollm2_tokenizers["warm"], reference)
    # SmolLM2's GGUF metadata: <|im_start|>=1 doubles as bos, <|im_end|>=2 is eos.
    warm = smollm2_tokenizers["warm"]
    assert (warm.bos_token, warm.eos_token, warm.eos_token_id) == ("<|im_start|>", "<|im_end|>", 2)


def test_gguf_tokenizer_cache_is_written_once_and_fast(smollm2_tokenizers: dict) -> None:
    entries = [p for p in smollm2_tokenizers["cache_root"].iterdir()]
    # One complete entry and no staging folders left behind.
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    assert (entries[0] / "tokenizer.json").is_file()
    # Generous bound for loaded CI machines; typically ~0.2 s against ~5 s cold.
    assert smollm2_tokenizers["warm_s"] < 2.0
    assert smollm2_tokenizers["warm_s"] < smollm2_tokenizers["cold_s"]


def test_chat_template_of_smollm2(smollm2_tokenizers: dict) -> None:
    tokenizer = smollm2_tokenizers["warm"]
    text = render_chat_template(tokenizer, [{"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = apply_chat_template(tokenizer, [{"role": "user", "content": "hi"}])
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tokenizer.bos_token_id) == 3  # system, user, assistant turns; no extra BOS
    assert tokenizer.decode(ids) == text


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A stand-in ``.gguf`` whose "conversion" returns the tiny test tokenizer,
    counting conversions, so the cache logic is tested in milliseconds."""
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF-not-really")
    calls = {"conversions": 0, "path": str(path)}
    real_from_pretrained = AutoTokenizer.from_pretrained

    def from_pretrained(source: str, *args, **kwargs):
        if "gguf_file" in kwargs:
            calls["conversions"] += 1
            tokenizer = train_tiny_tokenizer()
            tokenizer.chat_template = CHATML_TEMPLATE
            return tokenizer
        return real_from_pretrained(source, *args, **kwargs)

    monkeypatch.setattr(tokenizer_module.AutoTokenizer, "from_pretrained", from_pretrained)
    return calls


def test_cache_hit_skips_conversion_and_corrupt_entry_is_rebuilt(fake_gguf: dict) -> None:
    first = load_tokenizer(fake_gguf["path"])
    second = load_tokenizer(fake_gguf["path"])
    assert fake_gguf["conversions"] == 1
    assert second.encode("The harbour town") == first.encode("The harbour town")
    assert second.chat_template == CHATML_TEMPLATE

    (entry,) = tokenizer_cache_root().iterdir()
    (entry / "tokenizer.json").write_text("{ truncated")
    third = load_tokenizer(fake_gguf["path"])
    assert fake_gguf["conversions"] == 2
    assert third.encode("The harbour town") == first.encode("The harbour town")


def test_cache_key_follows_file_changes(fake_gguf: dict) -> None:
    load_tokenizer(fake_gguf["path"])
    Path(fake_gguf["path"]).write_bytes(b"GGUF-another-file")
    load_tokenizer(fake_gguf["path"])
    assert fake_gguf["conversions"] == 2
    assert len(list(tokenizer_cache_root().iterdir())) == 2


def test_hf_folder_tokenizer_with_chat_template_file(tmp_path: Path) -> None:
    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(tmp_path)
    # transformers 5 writes the template to chat_template.jinja, not tokenizer_config.json.
    assert (tmp_path / "chat_template.jinja").is_file()
    loaded = load_tokenizer(str(tmp_path))
    ids = apply_chat_template(loaded, [{"role": "user", "content": "Hello"}])
    assert loaded.decode(ids) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    without_prompt = render_chat_template(
        loaded, [{"role": "user", "content": "Hello"}], add_generation_prompt=False
    )
    assert without_prompt == "<|im_start|>user\nHello<|im_end|>\n"


def test_missing_tokenizer_source(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesMissingError):
        load_tokenizer(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelFilesMissingError):
        load_tokenizer(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize(
    ("messages", "complaint"),
    [
        ([], "at least one"),
        ("hello", "list"),
        (["hello"], r"messages\[0\] must be an object"),
        ([{"role": "user"}], r"messages\[0\].content"),
        ([{"role": "user", "content": "a"}, {"content": "b"}], r"messages\[1\].role"),
        ([{"role": 3, "content": "a"}], "role"),
        ([{"role": "user", "content": None}], "content"),
    ],
)
def test_malformed_messages_are_invalid_requests(messages: object, complaint: str) -> None:
    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE
    with pytest.raises(InvalidRequestError, match=complaint):
        apply_chat_template(tokenizer, messages)  # type: ignore[arg-type]


def test_missing_or_failing_chat_template_is_an_invalid_request() -> None:
    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(InvalidRequestError, match="no chat template"):
        apply_chat_template(tokenizer, [{"role": "user", "content": "hi"}])
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('tools unsupported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(InvalidRequestError, match="tools unsupported"):
        render_chat_template(tokenizer, [{"role": "tool", "content": "x"}])


def test_eos_token_ids() -> None:
    tokenizer = train_tiny_tokenizer()  # eos is <|im_end|>
    eos = tokenizer.eos_token_id
    assert eos_token_ids(tokenizer, LlamaConfig(eos_token_id=eos)) == (eos,)
    assert eos_token_ids(tokenizer, LlamaConfig(eos_token_id=[7, eos, 7])) == (7, eos)
    assert eos_token_ids(tokenizer, LlamaConfig(eos_token_id=None), extra=[9, eos]) == (eos, 9)
    assert eos_token_ids(tokenizer, LlamaConfig(eos_token_id=5), extra=(6,)) == (5, eos, 6)
