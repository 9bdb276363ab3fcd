"""The PrefillWorker service: compute a prompt's uncached blocks, publish them, return the first token.

Lifecycle of ``Prefill``:
  1. validate the sampling params (INVALID_ARGUMENT otherwise);
  2. pull the prompt's cached prefix from the registry (``fetch_prefix``);
  3. run the prompt with a one-token budget, publishing every full block as
     the engine finishes it;
  4. wait until all blocks are stored, then answer with the first token and
     the prompt's block hashes. A cancelled call aborts the request.
"""

from __future__ import annotations

import dataclasses
import logging

import grpc

from services.common.convert import FINISH_REASONS, position_logprobs_to_proto, sampling_from_proto
from services.common.tracing import annotate
from services.engine.errors import InvalidRequestError
from services.worker.engine_worker import EngineWorker
from services.worker.load import worker_load
from tandem._proto.tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc

logger = logging.getLogger(__name__)


class PrefillServicer(worker_pb2_grpc.PrefillWorkerServicer):
    def __init__(self, worker: EngineWorker) -> None:
        self.worker = worker

    def Prefill(self, request: worker_pb2.PrefillRequest, context: grpc.ServicerContext) -> worker_pb2.PrefillResponse:
        engine = self.worker.engine
        annotate(request_id=request.request_id, worker_id=self.worker.worker_id,
                 prompt_tokens=len(request.prompt_token_ids))
        try:
            params = sampling_from_proto(request.sampling)
            # Only the first token is sampled here; the decode worker applies the
            # stop conditions to it. min_tokens >= 1 still bans EOS for it.
            params = dataclasses.replace(
                params, n=1, max_tokens=1, min_tokens=min(params.min_tokens, 1), stop=[], prompt_logprobs=None
            )
            prompt = list(request.prompt_token_ids)
            prepared = engine.engine.prepare_request(request.request_id, prompt, params)
        except InvalidRequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        fetch = self.worker.fetch_prefix(request.request_id, prompt)
        child_id = f"{request.request_id}#0"
        self.worker.publish(child_id)
        stream = engine.submit(prepared)
        context.add_callback(lambda: engine.abort(request.request_id))
        final = None
        try:
            for output in stream:
                final = output
        finally:
            self.worker.wait_published(child_id)
        assert final is not None
        sample = final.outputs[0]
        if sample.finish_reason == "abort" or not sample.token_ids:
            context.abort(grpc.StatusCode.CANCELLED, "the prefill was aborted")
        self.worker.counters["prefilled_tokens"] += len(prompt) - final.num_cached_tokens
        self.worker.counters["prefill_cached_tokens"] += final.num_cached_tokens
        self.worker.counters["prefill_requests"] += 1
        response = worker_pb2.PrefillResponse(
            first_token_id=sample.token_ids[0],
            block_hashes=fetch.block_hashes,
            num_cached_tokens=final.num_cached_tokens,
            num_computed_tokens=len(prompt) - final.num_cached_tokens,
            finish_reason=FINISH_REASONS[sample.finish_reason],
        )
        if sample.logprobs:
            response.first_logprob.CopyFrom(position_logprobs_to_proto(sample.token_ids[0], sample.logprobs[0]))
        return response

    def Abort(self, request: common_pb2.AbortRequest, context: grpc.ServicerContext) -> common_pb2.AbortResponse:
        self.worker.engine.abort(request.request_id)
        return common_pb2.AbortResponse(aborted=True)

    def GetLoad(self, request: common_pb2.LoadRequest, context: grpc.ServicerContext) -> common_pb2.WorkerLoad:
        return worker_load(self.worker)
