"""The retry-after hint a refused Generate call carries in its trailing metadata.

gRPC has no Retry-After header, so the router puts the hint in the trailing
metadata of a RESOURCE_EXHAUSTED or UNAVAILABLE status, in milliseconds, and
clients (the HTTP gateway turns it into ``Retry-After``) read it back.
"""

from __future__ import annotations

from collections.abc import Iterable

RETRY_AFTER_KEY = "tandem-retry-after-ms"


def retry_after_metadata(seconds: float) -> tuple[tuple[str, str], ...]:
    return ((RETRY_AFTER_KEY, str(max(0, round(seconds * 1000)))),)


def parse_retry_after(metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """Seconds from a call's trailing metadata, or None when it has no (valid) hint."""
    for key, value in metadata or ():
        if key == RETRY_AFTER_KEY:
            try:
                return int(value) / 1000.0
            except (TypeError, ValueError):
                return None
    return None
