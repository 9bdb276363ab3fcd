"""The path of one sample through the mesh: prefix lookup, prefill hop, decode stream.

Steps 1-3 of the lifecycle in :mod:`services.router.router`: hash the
prompt's full blocks and ask the kvstore what it holds; prefill on a dedicated
prefill worker when enough of the prompt is uncached (falling back to the
decode worker if that fails); then pick a decode worker, name the blocks it
may pull and stream its deltas, retrying elsewhere if it is unreachable before
its first delta.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from services.common.convert import sampling_to_proto
from services.engine.block_hash import BlockHash, hash_full_blocks, root_block_hash
from services.engine.sampling_params import SamplingParams
from services.kvstore.errors import KvStoreError
from services.router.errors import RouterError
from services.router.metrics import RouterMetrics
from services.router.placement import BlockLocality, pick_decode, pick_prefill
from services.router.sample_call import SampleCall
from services.router.worker_pool import WorkerPool
from tandem._proto.tandem.v1 import common_pb2, worker_pb2

if TYPE_CHECKING:
    from services.kvstore.client import KvStoreClient
    from services.router.router import RouterConfig

logger = logging.getLogger(__name__)


class SamplePath:
    def __init__(self, pool: WorkerPool, kvstore: KvStoreClient, config: RouterConfig,
                 metrics: RouterMetrics) -> None:
        self.pool = pool
        self.kvstore = kvstore
        self.config = config
        self.metrics = metrics
        self.root_hash = root_block_hash(config.model_fingerprint)
        self.prefill_locality = BlockLocality()
        self.decode_locality = BlockLocality()
        self.counters: dict[str, int] = {"prefill_disaggregated": 0, "prefill_on_decode": 0, "prefill_fallbacks": 0}

    def block_hashes(self, token_ids: list[int]) -> list[BlockHash]:
        return hash_full_blocks(token_ids, self.config.block_size, self.root_hash)

    def run(self, call: SampleCall, prompt_ids: list[int], params: SamplingParams) -> Iterator[worker_pb2.TokenDelta]:
        """Steps 1-3 of the router's lifecycle for one sample: lookup, prefill hop, decode stream."""
        hashes = self.block_hashes(prompt_ids)
        # A prompt shorter than disagg_min_tokens is prefilled by the decode
        # worker whatever the registry holds, and nothing but prefill workers
        # publishes blocks: skip the lookup (always, in a colocated mesh).
        cached_blocks = 0
        if len(prompt_ids) >= self.config.disagg_min_tokens:
            cached_blocks = self._cached_blocks(hashes)
            self.metrics.observe_prefix_lookup(len(prompt_ids), cached_blocks * self.config.block_size)
        uncached = len(prompt_ids) - cached_blocks * self.config.block_size
        sampling = sampling_to_proto(params)
        # The decode worker pulls only the blocks named here: those the registry holds.
        decode_request = worker_pb2.DecodeRequest(
            request_id=call.request_id, prompt_token_ids=prompt_ids, sampling=sampling,
            block_hashes=hashes[:cached_blocks],
        )
        # Prompt logprobs need the logits of every prompt position, which only the
        # worker that computes the whole prompt has: the decode worker does it all.
        if uncached >= self.config.disagg_min_tokens and params.prompt_logprobs is None:
            first = self._prefill(call, prompt_ids, sampling, hashes)
            if first is not None:
                decode_request.first_token_id = first.first_token_id
                if first.HasField("first_logprob"):
                    decode_request.first_logprob.CopyFrom(first.first_logprob)
                # The prefill worker published every full block of the prompt.
                del decode_request.block_hashes[:]
                decode_request.block_hashes.extend(hashes)
        if not decode_request.HasField("first_token_id"):
            self.counters["prefill_on_decode"] += 1
        yield from self._decode(call, decode_request, hashes)

    def _cached_blocks(self, hashes: list[BlockHash]) -> int:
        """The registry's cached prefix; 0 when the registry is unreachable (workers recompute)."""
        if not hashes:
            return 0
        try:
            return self.kvstore.lookup(hashes)
        except KvStoreError as exc:
            logger.warning("kvstore lookup failed (%s); placing as if nothing were cached", type(exc).__name__)
            return 0

    def _prefill(self, call: SampleCall, prompt_ids: list[int], sampling: common_pb2.SamplingParams,
                 hashes: list[BlockHash]) -> worker_pb2.PrefillResponse | None:
        dedicated = [w for w in self.pool.healthy("prefill") if w.role == "prefill"]
        worker = pick_prefill(dedicated, hashes, self.prefill_locality)
        if worker is None:
            return None
        call.workers.append(worker)
        worker.in_flight += 1
        try:
            call.prefill_call = worker.prefill.Prefill.future(
                worker_pb2.PrefillRequest(request_id=call.request_id, prompt_token_ids=prompt_ids, sampling=sampling),
                timeout=self.config.prefill_timeout_s,
            )
            call.started(call.prefill_call)
            response = call.prefill_call.result()
        except grpc.FutureCancelledError:
            raise RouterError(grpc.StatusCode.CANCELLED, "the request was cancelled") from None
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise RouterError(exc.code(), exc.details()) from None
            if exc.code() == grpc.StatusCode.CANCELLED:
                raise RouterError(grpc.StatusCode.CANCELLED, "the request was cancelled") from None
            logger.warning("prefill on %s failed (%s); the decode worker prefills", worker.worker_id, exc.code())
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                worker.mark_failed()
            self.counters["prefill_fallbacks"] += 1
            return None
        finally:
            worker.in_flight -= 1
        self.counters["prefill_disaggregated"] += 1
        self.prefill_locality.record(hashes, worker.worker_id)
        return response

    def _decode(self, call: SampleCall, request: worker_pb2.DecodeRequest,
                hashes: list[BlockHash]) -> Iterator[worker_pb2.TokenDelta]:
        max_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 256
        blocks_needed = -(-(len(request.prompt_token_ids) + max_tokens) // self.config.block_size)
        tried: set[str] = set()
        while True:
            candidates = [w for w in self.pool.healthy("decode") if w.worker_id not in tried]
            worker = pick_decode(candidates, hashes, self.decode_locality, blocks_needed)
            if worker is None:
                raise RouterError(grpc.StatusCode.UNAVAILABLE, "no decode worker is available")
            tried.add(worker.worker_id)
            call.workers.append(worker)
            worker.in_flight += 1
            self.decode_locality.record(hashes, worker.worker_id)
            started = False
            try:
                call.decode_call = stream = worker.decode.Decode(request)
                call.started(stream)
                for delta in stream:
                    started = True
                    yield delta
                return
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED):
                    raise RouterError(exc.code(), exc.details()) from None
                worker.mark_failed()
                if not started and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    # Nothing reached the client yet: the sample can start over elsewhere.
                    logger.warning("decode worker %s unreachable; retrying elsewhere", worker.worker_id)
                    continue
                raise RouterError(
                    grpc.StatusCode.UNAVAILABLE, f"decode worker {worker.worker_id} failed: {exc.code().name}"
                ) from None
            finally:
                worker.in_flight -= 1
