"""Token-by-token detokenization of one output sequence.

Decoding each new token on its own is wrong in two ways: a UTF-8 character can
be split over several tokens (byte-level BPE, SentencePiece byte fallback), and
SentencePiece-style decoders drop the leading space of whatever they decode
first, so the meaning of ``▁world`` depends on what came before it.

The fix is to decode a short window of recent tokens each time: the window
starts with tokens whose text was already produced (the prompt tail at first,
then the tokens of the previous emission), and only the text past what those
produced is new. Text is held back while it ends in U+FFFD, the mark of an
unfinished character.

This is the scheme of ``tokenizers.decoders.DecodeStream``; it is written out
here because the engine needs three things that class does not do: start
from a prompt that ends mid-character (with byte-level BPE it then repeats
prompt text in the output), ``flush`` a sequence that ends mid-character, and
carry on when a decoder rewrites text it already produced (byte-fallback
decoders do that on invalid byte runs; DecodeStream raises). The cost is one
Rust decode of a few tokens per token, two when text is emitted: a few
microseconds, about twice DecodeStream's.

``clean_up_tokenization_spaces`` is not applied: transformers 5 ignores it for
BPE models, which is what the supported LLM tokenizers are.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

# How many trailing prompt tokens give the decoder enough context. One would do
# for spacing; a few more cover a character whose bytes span several tokens.
_PROMPT_CONTEXT_TOKENS = 6
# A UTF-8 character has at most 4 bytes, so with one byte per token (byte
# fallback) a character boundary is at most 3 tokens away from any cut.
_MAX_CONTINUATION_BYTES = 3
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns output token ids, pushed one at a time, into text deltas."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
    ) -> None:
        self._backend: Tokenizer = tokenizer.backend_tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._text = ""
        # Tokens decoded together on each push. The first ``_num_emitted`` of
        # them decode to text that is already out (or is prompt); ``_prefix`` is
        # that text, so what the window decodes to past it is new.
        self._window, self._num_emitted, self._prefix = self._prompt_context(list(prompt_token_ids))

    @property
    def text(self) -> str:
        """All output text finalized so far."""
        return self._text

    def push(self, token_id: int) -> str:
        """Add one output token; return the text it finalized ("" while a character is incomplete)."""
        self._window.append(token_id)
        text = self._decode(self._window)
        if text == self._prefix and len(self._window) == self._num_emitted + 1:
            # The token adds no text by itself (a skipped special token, an id
            # past the tokenizer's vocabulary): drop it, or the window would
            # grow with every such token and each push would decode all of it.
            self._window.pop()
            return ""
        if len(text) <= len(self._prefix) or text.endswith(_REPLACEMENT_CHAR):
            return ""
        if text.startswith(self._prefix):
            delta = text[len(self._prefix) :]
        else:
            # The decoder rewrote text that is already out (e.g. byte tokens
            # that were valid alone joined an invalid run and all became
            # U+FFFD). That cannot be taken back; emit what this token added.
            before = self._decode(self._window[:-1])
            delta = text[len(before) :] if text.startswith(before) else ""
        self._advance()
        self._text += delta
        return delta

    def flush(self) -> str:
        """Finalize text held back at the end of the sequence (an unfinished character becomes U+FFFD)."""
        if len(self._window) == self._num_emitted:
            return ""
        text = self._decode(self._window)
        delta = text[len(self._prefix) :] if text.startswith(self._prefix) else ""
        self._advance()
        self._text += delta
        return delta

    def _advance(self) -> None:
        # The tokens just emitted become the context of the next ones; older
        # tokens no longer affect how new ones decode.
        del self._window[: self._num_emitted]
        self._num_emitted = len(self._window)
        self._prefix = self._decode(self._window)

    def _decode(self, token_ids: list[int]) -> str:
        return self._backend.decode(token_ids, skip_special_tokens=self._skip_special_tokens)

    def _prompt_context(self, prompt_token_ids: list[int]) -> tuple[list[int], int, str]:
        """The window to start from: prompt tail, how many of its tokens are settled, and their text.

        A prompt normally ends on a character boundary and the whole tail is
        settled. One given as token ids can end mid-character; the output then
        completes that character and must emit it whole, so the settled text
        stops before it. Two decoder families need two ways to find that point:

        * byte fallback (one token per byte) turns a whole run of byte tokens
          into U+FFFD when the run is not valid UTF-8, so the cut must be a
          token boundary on a character boundary, at most 3 tokens back; the
          tail's start may need the same care, since it can split a run too;
        * byte-level tokens can hold the end of one character and the start of
          the next, so no token boundary may be near, but that decoder replaces
          bad bytes locally: the settled text is the decoding minus its trailing
          U+FFFD run.

        Whichever settled text is longer is right (the other is a prefix of it).
        A prompt ending in a genuine U+FFFD is indistinguishable from an
        unfinished character; its U+FFFD then shows up as the first output text.
        """
        num_tokens = len(prompt_token_ids)
        nominal_start = max(0, num_tokens - _PROMPT_CONTEXT_TOKENS)
        for start in range(nominal_start, max(nominal_start - _MAX_CONTINUATION_BYTES, 0) - 1, -1):
            for end in range(num_tokens, max(num_tokens - _MAX_CONTINUATION_BYTES, start) - 1, -1):
                cut_text = self._decode(prompt_token_ids[start:end])
                if cut_text.endswith(_REPLACEMENT_CHAR):
                    continue
                window = prompt_token_ids[start:]
                if end == num_tokens:
                    return window, len(window), cut_text
                stripped = self._decode(window).rstrip(_REPLACEMENT_CHAR)
                return window, end - start, max(cut_text, stripped, key=len)
        window = prompt_token_ids[nominal_start:]
        return window, 0, self._decode(window).rstrip(_REPLACEMENT_CHAR)
