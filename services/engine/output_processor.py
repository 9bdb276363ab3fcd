"""Turns sampled token ids into user-facing outputs.

Per user request (a *parent*, with ``n`` sample children) it keeps the
incremental detokenizer, the stop-string matcher, accumulated logprobs and
timing, and builds :class:`RequestOutput` snapshots. Stop strings are found
here, on text, so the engine asks the scheduler to finish a child when one
matches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from services.engine.detokenizer import IncrementalDetokenizer
from services.engine.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from services.engine.request import Request
from services.engine.sampler import SampleLogprobs
from services.engine.stop_strings import StopStringMatcher


@dataclass
class SampleState:
    index: int
    request: Request
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher | None
    text: str = ""
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    samples: list[SampleState]
    metrics: RequestMetrics
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    changed: bool = True
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


class OutputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}
        self.child_to_sample: dict[str, tuple[ParentState, SampleState]] = {}

    def add_parent(self, request_id: str, prompt: str | None, children: list[Request]) -> None:
        first = children[0]
        params = first.sampling_params
        samples = []
        for index, child in enumerate(children):
            sample = SampleState(
                index=index,
                request=child,
                detokenizer=IncrementalDetokenizer(
                    self.tokenizer, child.prompt_token_ids, params.skip_special_tokens
                ),
                stop_matcher=StopStringMatcher(params.stop) if params.stop else None,
                logprobs=[] if params.logprobs is not None else None,
            )
            samples.append(sample)
        parent = ParentState(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=first.prompt_token_ids,
            samples=samples,
            metrics=RequestMetrics(arrival_time=first.arrival_time),
            # Position 0 has no logprob: nothing precedes it.
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None,
        )
        self.parents[request_id] = parent
        for child, sample in zip(children, samples):
            self.child_to_sample[child.request_id] = (parent, sample)

    def _to_position(self, lp: SampleLogprobs) -> PositionLogprobs:
        position = {
            tid: Logprob(val, rank + 1, self.tokenizer.decode([tid]))
            for rank, (tid, val) in enumerate(zip(lp.top_token_ids, lp.top_logprobs))
        }
        if lp.token_id not in position:
            position[lp.token_id] = Logprob(lp.logprob, lp.rank, self.tokenizer.decode([lp.token_id]))
        return position

    def on_prompt_logprobs(self, child_id: str, logprobs: list[SampleLogprobs]) -> None:
        parent, sample = self.child_to_sample[child_id]
        if sample.index == 0 and parent.prompt_logprobs is not None:
            parent.prompt_logprobs.extend(self._to_position(lp) for lp in logprobs)

    def on_token(self, child_id: str, token_id: int, logprobs: SampleLogprobs | None) -> str | None:
        """Record one new token; returns the stop string if one now ends the sample."""
        parent, sample = self.child_to_sample[child_id]
        parent.changed = True
        now = time.monotonic()
        if parent.metrics.first_token_time is None:
            parent.metrics.first_token_time = now
        if logprobs is not None and sample.logprobs is not None:
            sample.logprobs.append(self._to_position(logprobs))
            sample.cumulative_logprob += logprobs.logprob
        before = len(sample.text)
        sample.text += sample.detokenizer.push(token_id)
        if sample.stop_matcher is None:
            return None
        match = sample.stop_matcher.find(sample.text, before)
        if match is None:
            return None
        sample.text = sample.text[: match.cut_index]
        return match.stop_string

    def on_finished(self, child: Request, stop_string: str | None = None) -> None:
        parent, sample = self.child_to_sample[child.request_id]
        parent.changed = True
        sample.finish_reason = child.status.finish_reason
        sample.stop_reason = stop_string if stop_string is not None else child.stop_reason
        if stop_string is None:
            # Bytes of a character the sample never finished: decode() shows them too.
            sample.text += sample.detokenizer.flush()
        if parent.finished:
            parent.metrics.finished_time = time.monotonic()

    def snapshot(self, parent: ParentState, num_cached_tokens: int) -> RequestOutput:
        outputs = [
            CompletionOutput(
                index=s.index,
                text=s.text,
                token_ids=list(s.request.output_token_ids),
                finish_reason=s.finish_reason,
                stop_reason=s.stop_reason,
                logprobs=s.logprobs,
                cumulative_logprob=s.cumulative_logprob if s.logprobs is not None else None,
            )
            for s in parent.samples
        ]
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=outputs,
            finished=parent.finished,
            metrics=parent.metrics,
            prompt_logprobs=parent.prompt_logprobs,
            num_cached_tokens=num_cached_tokens,
        )

    def pop_changed(self) -> list[ParentState]:
        """Parents with news since the last call; finished ones are forgotten."""
        changed = [p for p in self.parents.values() if p.changed]
        for parent in changed:
            parent.changed = False
            if parent.finished:
                del self.parents[parent.request_id]
                for sample in parent.samples:
                    self.child_to_sample.pop(sample.request.request_id, None)
        return changed
