"""The DecodeWorker service: pull the prompt's blocks, join the running batch, stream tokens.

Lifecycle of ``Decode``:
  1. validate (INVALID_ARGUMENT otherwise);
  2. pull the blocks of the prompt this worker lacks from the registry
     (only those the router says it holds);
  3. admit the sequence with the prefill worker's first token already in
     place (or none: then this worker prefills the uncached part itself);
  4. stream token deltas, one per engine step, or one for several steps when
     this thread falls behind the engine; text that could still turn out to
     be the start of a stop string is held back until it cannot;
  5. a cancelled or broken call aborts the request, which frees its blocks.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator

import grpc

from services.common.convert import (
    FINISH_REASONS,
    position_logprobs_to_proto,
    sample_logprobs_from_proto,
    sampling_from_proto,
)
from services.common.tracing import annotate
from services.engine.async_engine import RequestStream
from services.engine.errors import InvalidRequestError
from services.engine.outputs import RequestOutput
from services.engine.stop_strings import StopStringMatcher
from services.worker.engine_worker import EngineWorker
from services.worker.load import worker_load
from tandem._proto.tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc

logger = logging.getLogger(__name__)


class DeltaTracker:
    """What of a sample's output has been sent, so each delta carries only the new part."""

    def __init__(self, stop: list[str]) -> None:
        self.matcher = StopStringMatcher(stop)
        self.sent_tokens = 0
        self.sent_chars = 0
        self.sent_prompt_logprobs = False

    def delta(self, output: RequestOutput) -> worker_pb2.TokenDelta | None:
        sample = output.outputs[0]
        finished = sample.finish_reason is not None
        text_end = len(sample.text)
        if not finished and self.matcher:
            text_end -= self.matcher.holdback(sample.text)
        new_tokens = sample.token_ids[self.sent_tokens :]
        if not new_tokens and text_end <= self.sent_chars and not finished:
            return None
        delta = worker_pb2.TokenDelta(
            token_ids=new_tokens,
            text=sample.text[self.sent_chars : max(text_end, self.sent_chars)],
            finish_reason=FINISH_REASONS[sample.finish_reason],
            stop_reason="" if sample.stop_reason is None else str(sample.stop_reason),
        )
        if sample.logprobs is not None:
            positions = sample.logprobs[self.sent_tokens : len(sample.token_ids)]
            delta.logprobs.extend(position_logprobs_to_proto(t, p) for t, p in zip(new_tokens, positions))
        if self.sent_tokens == 0 and self.sent_chars == 0:
            delta.num_prompt_tokens = len(output.prompt_token_ids)
            delta.num_cached_tokens = output.num_cached_tokens
        self._attach_prompt_logprobs(output, delta)
        self.sent_tokens = len(sample.token_ids)
        self.sent_chars = max(text_end, self.sent_chars)
        return delta

    def _attach_prompt_logprobs(self, output: RequestOutput, delta: worker_pb2.TokenDelta) -> None:
        # The engine fills prompt logprobs chunk by chunk; they go out once, when
        # every position is in (by the first sampled token at the latest).
        positions = output.prompt_logprobs
        prompt = output.prompt_token_ids
        if self.sent_prompt_logprobs or positions is None or len(positions) < len(prompt):
            return
        delta.prompt_logprobs.extend(
            position_logprobs_to_proto(token_id, position)
            for token_id, position in zip(prompt[1:], positions[1:])
            if position is not None
        )
        self.sent_prompt_logprobs = True


def newest_snapshots(stream: RequestStream) -> Iterator[RequestOutput]:
    """The stream's snapshots, skipping each one that a newer one already waiting supersedes.

    A snapshot holds the request's whole output so far, so the newest waiting
    one carries everything the skipped ones did. A reader that keeps up with
    the engine sees every snapshot (one delta per step); one that falls behind
    (many streams, one GIL) sends one delta for several steps instead of one
    message per token through every hop.
    """
    while True:
        output = stream.get()
        while not output.finished:
            try:
                output = stream.get(timeout=0)
            except queue.Empty:
                break
        yield output
        if output.finished:
            return


class DecodeServicer(worker_pb2_grpc.DecodeWorkerServicer):
    def __init__(self, worker: EngineWorker) -> None:
        self.worker = worker

    def Decode(self, request: worker_pb2.DecodeRequest, context: grpc.ServicerContext) -> Iterator[worker_pb2.TokenDelta]:
        engine = self.worker.engine
        prompt = list(request.prompt_token_ids)
        annotate(request_id=request.request_id, worker_id=self.worker.worker_id, prompt_tokens=len(prompt))
        presampled = [request.first_token_id] if request.HasField("first_token_id") else []
        try:
            params = sampling_from_proto(request.sampling)
            if params.n != 1:
                raise InvalidRequestError("a decode worker serves one sample per request (n must be 1)")
            first_logprobs = None
            if presampled and request.HasField("first_logprob"):
                first_logprobs = [sample_logprobs_from_proto(request.first_logprob)]
            prepared = engine.engine.prepare_request(
                request.request_id, prompt, params,
                presampled_token_ids=presampled, presampled_logprobs=first_logprobs,
            )
        except InvalidRequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # The first token is given: its KV (and the prompt's) is computed here,
        # so the blocks worth pulling are the prompt's. A request for prompt
        # logprobs needs the logits of every prompt position, so it recomputes
        # the whole prompt and pulled blocks would go unused. ``block_hashes``
        # lists the blocks the registry holds: none means nothing to pull (and
        # no registry round trip, nor a wait for the engine thread).
        if params.prompt_logprobs is None and request.block_hashes:
            self.worker.fetch_prefix(request.request_id, prompt + presampled, max_blocks=len(request.block_hashes))
        stream = engine.submit(prepared)
        context.add_callback(lambda: engine.abort(request.request_id))
        tracker = DeltaTracker(params.stop)
        self.worker.counters["decode_requests"] += 1
        for output in newest_snapshots(stream):
            delta = tracker.delta(output)
            if delta is not None:
                yield delta

    def Abort(self, request: common_pb2.AbortRequest, context: grpc.ServicerContext) -> common_pb2.AbortResponse:
        self.worker.engine.abort(request.request_id)
        return common_pb2.AbortResponse(aborted=True)

    def GetLoad(self, request: common_pb2.LoadRequest, context: grpc.ServicerContext) -> common_pb2.WorkerLoad:
        return worker_load(self.worker)
