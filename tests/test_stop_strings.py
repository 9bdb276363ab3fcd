"""StopStringMatcher: matches across deltas, cut index, precedence, streaming holdback."""

from __future__ import annotations

from services.engine.stop_strings import StopMatch, StopStringMatcher


def feed(matcher: StopStringMatcher, deltas: list[str]) -> tuple[str, StopMatch | None]:
    """Push deltas as the engine would; return the output text and the match that stopped it."""
    text = ""
    for delta in deltas:
        prev_len = len(text)
        text += delta
        match = matcher.find(text, prev_len)
        if match is not None:
            return text[: match.cut_index], match
    return text, None


def test_match_inside_one_delta() -> None:
    text, match = feed(StopStringMatcher(["END"]), ["Hello ", "world END here"])
    assert match == StopMatch("END", 12)
    assert text == "Hello world "


def test_match_across_token_boundaries() -> None:
    text, match = feed(StopStringMatcher(["</answer>"]), ["42", "</", "ans", "wer", ">", " more"])
    assert match is not None and match.stop_string == "</answer>"
    assert text == "42"


def test_stop_string_at_the_very_start() -> None:
    assert feed(StopStringMatcher(["\n\n"]), ["\n", "\nrest"]) == ("", StopMatch("\n\n", 0))


def test_no_match_and_no_false_positive_on_old_text() -> None:
    matcher = StopStringMatcher(["stop"])
    assert feed(matcher, ["st", "o", "p-less? no: sto", "rm"]) == ("", StopMatch("stop", 0))
    assert matcher.find("stop and more", prev_len=13) is None  # already seen before this delta
    assert feed(matcher, ["nothing ", "here"]) == ("nothing here", None)


def test_earliest_stop_string_wins() -> None:
    matcher = StopStringMatcher(["world", "lo w", "o"])
    # All three end in the same delta; "lo w" starts first.
    assert matcher.find("hello world", prev_len=0) == StopMatch("lo w", 3)
    # Across deltas, the one completed first stops the stream before the others.
    assert feed(matcher, ["hello", " world"]) == ("hell", StopMatch("o", 4))
    # In one delta, a match starting in earlier text still beats a later one.
    assert feed(matcher, ["hel", "lo world"]) == ("hel", StopMatch("lo w", 3))


def test_equal_start_prefers_shorter() -> None:
    assert StopStringMatcher(["abc", "ab"]).find("xxabc", prev_len=0) == StopMatch("ab", 2)


def test_multibyte_and_repeated_stop_strings() -> None:
    matcher = StopStringMatcher(["。", "。", "😀👍"])
    assert matcher.stop_strings == ("。", "😀👍")
    assert feed(matcher, ["你好", "😀", "👍 x"]) == ("你好", StopMatch("😀👍", 2))


def test_empty_matcher() -> None:
    matcher = StopStringMatcher([])
    assert not matcher
    assert matcher.find("anything", 0) is None
    assert matcher.holdback("anything") == 0


def test_holdback_withholds_possible_stop_prefix() -> None:
    matcher = StopStringMatcher(["</answer>", "STOP"])
    assert matcher.holdback("the result is </ans") == len("</ans")
    assert matcher.holdback("the result is <") == 1
    assert matcher.holdback("ST") == 2
    assert matcher.holdback("the result is 42") == 0
    # A complete stop string is a match, not a holdback (only proper prefixes count).
    assert matcher.holdback("STOP") == 0


def test_holdback_takes_longest_overlap() -> None:
    matcher = StopStringMatcher(["aab", "ab"])
    assert matcher.holdback("xaa") == 2  # could become "aab"
    assert matcher.holdback("xa") == 1


def test_streaming_with_holdback_never_leaks_stop_text() -> None:
    matcher = StopStringMatcher(["<|end|>"])
    deltas = ["Sure", "! <", "|", "en", "d|", ">junk"]
    text, sent = "", ""
    for delta in deltas:
        prev_len = len(text)
        text += delta
        match = matcher.find(text, prev_len)
        if match is not None:
            sent += text[len(sent) : match.cut_index]
            break
        safe_end = len(text) - matcher.holdback(text)
        sent += text[len(sent) : safe_end]
        assert "<" not in sent
    assert sent == "Sure! "
