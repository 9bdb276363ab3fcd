"""Finding user stop strings in text that grows a delta at a time.

Detokenized text arrives in arbitrary chunks, so a stop string can start in an
earlier delta and end in the latest one. Only matches that *end* inside the new
text need looking for: any match ending earlier was already seen (and stopped
the sequence) when that text arrived.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    """A stop string found in the output; the output text becomes ``text[:cut_index]``."""

    stop_string: str
    cut_index: int


class StopStringMatcher:
    """Detects a request's stop strings in its accumulated output text."""

    def __init__(self, stop: Sequence[str]) -> None:
        # Deduplicate but keep the caller's order, and drop empty strings, which
        # would match everywhere (SamplingParams already rejects them).
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop if s))
        self.max_stop_len = max((len(s) for s in self._stops), default=0)

    def __bool__(self) -> bool:
        return bool(self._stops)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self._stops

    def find(self, text: str, prev_len: int) -> StopMatch | None:
        """The earliest stop string in ``text`` that ends past ``text[:prev_len]``, if any.

        ``prev_len`` is the length of the text before the latest delta. When
        several stop strings match, the one starting first wins because it
        leaves the shortest output; at equal starts the shortest one wins,
        being the one a token-by-token stream would have completed first.
        """
        best: StopMatch | None = None
        for stop in self._stops:
            # A match ending past prev_len starts at or after prev_len - len + 1.
            index = text.find(stop, max(0, prev_len - len(stop) + 1))
            if index < 0:
                continue
            if (
                best is None
                or index < best.cut_index
                or (index == best.cut_index and len(stop) < len(best.stop_string))
            ):
                best = StopMatch(stop_string=stop, cut_index=index)
        return best

    def holdback(self, text: str) -> int:
        """How many trailing characters of ``text`` a stream must withhold for now.

        They are the longest suffix of ``text`` that is a proper prefix of some
        stop string: if the next delta completes that stop string, those
        characters must never reach the client.
        """
        longest = 0
        for stop in self._stops:
            # Only lengths that beat the current best and fit both strings matter.
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
