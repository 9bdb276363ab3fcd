"""One sequence as the scheduler sees it.

There is no prefill phase and no decode phase: a request only has
``num_computed_tokens`` catching up with ``num_tokens`` (prompt plus output).
A step that schedules ``k`` tokens for it advances the counter by ``k``; when the
counter reaches ``num_tokens`` the step's sampled token is appended and the
request is one token behind again. Preemption resets the counter to zero and
the request recomputes everything it had, output tokens included.

With overlap scheduling the scheduler plans step N+1 before step N's token is
known. The counter then advances when a step is *scheduled*, and a step that
will sample adds one *pending* token: its id exists only on the GPU until the
step is collected. ``num_tokens`` counts known tokens only;
``num_tokens_with_pending`` is what the scheduler catches up with.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from services.engine.block_hash import BlockHash
from services.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (
            RequestStatus.FINISHED_STOPPED,
            RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED,
        )

    @property
    def finish_reason(self) -> str | None:
        return self.value if self.finished else None


@dataclass(eq=False)
class Request:
    """A single sample being generated (a parent with ``n > 1`` fans out into ``n`` of these)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    # Prompt tokens found in the prefix cache when the request was first admitted.
    num_cached_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    # Keys of the request's full blocks, extended as tokens are appended.
    block_hashes: list[BlockHash] = field(default_factory=list)
    num_preemptions: int = 0
    # Per-request RNG (set when sampling_params.seed is given) so a seeded sample
    # does not depend on what else shares its batch.
    generator: torch.Generator | None = None
    stop_reason: str | int | None = None
    # Tokens sampled by scheduled steps whose results are not back yet (0 or 1).
    num_pending_tokens: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_tokens_with_pending(self) -> int:
        return self.num_tokens + self.num_pending_tokens

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        """Tokens ``[start, end)`` of prompt+output without building the full list."""
        prompt_len = len(self.prompt_token_ids)
        if end <= prompt_len:
            return self.prompt_token_ids[start:end]
        if start >= prompt_len:
            return self.output_token_ids[start - prompt_len : end - prompt_len]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - prompt_len]

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
