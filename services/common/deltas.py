"""Folding consecutive token deltas of a sample into one message.

Every hop of a stream (decode worker -> router -> gateway -> client) costs
per message, not per token. A hop that finds several deltas of the same
sample already waiting sends them as one: the tokens, text and logprobs
concatenated in order, the finish reason of the last. A hop that keeps up
still forwards each delta as it comes, so nothing waits to be batched.
"""

from __future__ import annotations

import queue
from typing import Any

from tandem._proto.tandem.v1 import worker_pb2


def drain(source: queue.SimpleQueue, items: list[Any]) -> list[Any]:
    """``items`` plus everything ``source`` holds now, without waiting."""
    while True:
        try:
            items.append(source.get_nowait())
        except queue.Empty:
            return items


def merge_token_delta(into: worker_pb2.TokenDelta, later: worker_pb2.TokenDelta) -> None:
    """Append ``later`` (the next delta of the same sample) to ``into``."""
    into.token_ids.extend(later.token_ids)
    into.text += later.text
    into.logprobs.extend(later.logprobs)
    into.prompt_logprobs.extend(later.prompt_logprobs)
    if later.finish_reason:
        into.finish_reason = later.finish_reason
        into.stop_reason = later.stop_reason
    if not into.num_prompt_tokens:
        into.num_prompt_tokens = later.num_prompt_tokens
        into.num_cached_tokens = later.num_cached_tokens


Item = tuple[int, worker_pb2.TokenDelta | BaseException | None]


def coalesce_deltas(items: list[Item]) -> tuple[dict[int, worker_pb2.TokenDelta], int, BaseException | None]:
    """Fold (sample index, delta | error | None at the sample's end) items.

    Returns one delta per sample index (in order of first appearance), how
    many samples ended, and the first error (items after it are dropped: the
    request fails there).
    """
    deltas: dict[int, worker_pb2.TokenDelta] = {}
    ended = 0
    for index, item in items:
        if item is None:
            ended += 1
        elif isinstance(item, BaseException):
            return deltas, ended, item
        elif index in deltas:
            merge_token_delta(deltas[index], item)
        else:
            deltas[index] = item
    return deltas, ended, None
