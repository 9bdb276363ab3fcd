"""Iteration-level continuous batching with a token budget.

Each ``schedule()`` call builds one step:

1. Running requests first, in admission order. Each gets the tokens it is
   behind by (one for a decoding request, a chunk for a long prompt), capped by
   what is left of ``max_num_batched_tokens``. When its blocks cannot be had,
   the most recently admitted running request not yet scheduled this step is
   preempted (blocks freed, progress reset, sent to the front of the waiting
   queue) until they can; if the request itself is the last one, it is
   preempted and the step goes on without it.
2. Waiting requests next, strictly first come first served, while the budget,
   ``max_num_seqs`` and free blocks allow, and only if nothing was preempted in
   this step. A prefix-cache hit moves ``num_computed_tokens`` past the hit.

Scheduling a chunk advances the request's ``num_computed_tokens`` at once
and, when the chunk samples, adds a pending token, so the next ``schedule()``
may run before this step's results are back (overlap scheduling): a request
then decodes its pending token, whose id the runner takes from the previous
step's output on the device. A request whose pending token will end it by
length (``max_tokens``, ``max_model_len``) is not scheduled again.

After the model ran, ``update_from_output`` turns each pending token into a
real one and finishes requests that hit EOS, a stop token id, ``max_tokens``
or ``max_model_len``. A request that ends on EOS or a stop id may already be
in the step after: that step's result for it is dropped.
Because every running request keeps its blocks and the oldest is served first,
the oldest request always progresses: there is no deadlock, only recompute.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.engine.kv_cache_manager import KVCacheManager
from services.engine.request import Request, RequestStatus


@dataclass
class ScheduledChunk:
    """The slice of one request that a step computes."""

    request: Request
    num_computed_before: int
    num_new_tokens: int
    block_ids: list[int]
    # Whether the chunk reaches the request's last token, so its logits are
    # sampled. Fixed at scheduling: the request grows once the token is appended.
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        self.samples = self.num_computed_before + self.num_new_tokens == self.request.num_tokens_with_pending


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # -- queue management ----------------------------------------------------

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """End a request (stop, length or abort) and release its blocks at once."""
        if request.is_finished:
            return
        request.status = status
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.kv_cache.free(request)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled: set[str] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens_with_pending - request.num_computed_tokens, budget)
            if num_new <= 0 or self._ends_by_length(request):
                i += 1  # its step in flight finishes it (or nothing is left to compute)
                continue
            while not self.kv_cache.can_allocate(request, num_new):
                victim = self.running[-1]
                if victim.request_id in scheduled:
                    # Everything after us is already in this step; wait a step.
                    victim = request
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
            else:
                out.chunks.append(self._schedule_chunk(request, num_new))
                scheduled.add(request.request_id)
                budget -= num_new
                i += 1
                continue
            # ``request`` itself was preempted: running[i] is now the next one.

        while (
            self.waiting
            and budget > 0
            and not out.preempted
            and len(self.running) < self.config.max_num_seqs
        ):
            request = self.waiting[0]
            if request.num_pending_tokens:
                break  # preempted while its last step runs: re-admit once that token is known
            hits = self.kv_cache.find_cached_prefix(request)
            num_cached_tokens = len(hits) * self.kv_cache.block_size
            num_new = min(request.num_tokens - num_cached_tokens, budget)
            if not self.kv_cache.can_allocate(request, num_new, hits):
                break
            self.waiting.popleft()
            before = request.num_computed_tokens
            block_ids = self.kv_cache.allocate(request, num_new, hits)
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.chunks.append(
                self._advance(ScheduledChunk(request, before + num_cached_tokens, num_new, block_ids))
            )
            budget -= num_new
        return out

    def _schedule_chunk(self, request: Request, num_new: int) -> ScheduledChunk:
        before = request.num_computed_tokens
        block_ids = self.kv_cache.allocate(request, num_new)
        return self._advance(ScheduledChunk(request, before, num_new, block_ids))

    @staticmethod
    def _advance(chunk: ScheduledChunk) -> ScheduledChunk:
        """Count the chunk as computed now; a sampling chunk leaves a pending token."""
        request = chunk.request
        request.num_computed_tokens = chunk.num_computed_before + chunk.num_new_tokens
        if chunk.samples:
            request.num_pending_tokens += 1
        return chunk

    def _ends_by_length(self, request: Request) -> bool:
        """Whether the pending token alone will hit ``max_tokens`` or ``max_model_len``."""
        return request.num_pending_tokens > 0 and self._at_length_limit(request, request.num_pending_tokens)

    def _at_length_limit(self, request: Request, num_extra_tokens: int = 0) -> bool:
        """Whether the request, with ``num_extra_tokens`` more outputs, reaches ``max_tokens`` or ``max_model_len``."""
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is not None and request.num_output_tokens + num_extra_tokens >= max_tokens:
            return True
        return request.num_tokens + num_extra_tokens >= self.config.max_model_len

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    # -- after the model ran -------------------------------------------------

    def update_from_output(
        self, output: SchedulerOutput, sampled_token_ids: dict[str, int]
    ) -> list[Request]:
        """Append the step's sampled tokens; returns the requests that finished."""
        finished: list[Request] = []
        for chunk in output.chunks:
            request = chunk.request
            if not chunk.samples or request.is_finished:  # finished (or aborted) while the step ran
                continue
            request.num_pending_tokens -= 1
            token_id = sampled_token_ids[request.request_id]
            request.append_output_token(token_id)
            status = self.check_token_stop(request, token_id)
            if status is not None:
                self.finish_request(request, status)
                finished.append(request)
        return finished

    def check_token_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        """The finished status ``token_id`` (just appended) gives the request, if any."""
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token_id == request.eos_token_id:
                return RequestStatus.FINISHED_STOPPED
            if token_id in params.stop_token_ids:
                request.stop_reason = token_id
                return RequestStatus.FINISHED_STOPPED
        if self._at_length_limit(request):
            return RequestStatus.FINISHED_LENGTH
        return None
