"""An engine attached to the block registry: what prefill and decode workers share.

Lifecycle of a request on a worker:
  1. ``fetch_prefix``: hash the prompt's full blocks, count those already in
     the local cache, lease the next ones from the kvstore, pull their
     payloads (checksums verified), release the lease, and write them into
     the local cache as prefix hits. A missing or corrupt block only means
     that part of the prompt is recomputed.
  2. The request runs in the engine (``AsyncEngine``).
  3. Requests marked for publishing have every full block the engine finishes
     copied out after the step and put to the kvstore by a publisher thread,
     while later chunks of the prompt are still computing.
  4. ``wait_published`` returns once every block of a request is stored.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from opentelemetry import context as otel_context

from services.common.tracing import tracer
from services.engine.async_engine import AsyncEngine
from services.engine.block_hash import BlockHash
from services.engine.kv_transfer import ExportedBlock
from services.engine.scheduler import SchedulerOutput
from services.kvstore.client import BlockMiss, BlockPayload, KvStoreClient
from services.kvstore.errors import KvStoreError

logger = logging.getLogger(__name__)

# A lease only has to outlive one pull; if the worker dies mid-pull the store
# reclaims the blocks after this long.
PULL_LEASE_TTL_MS = 30_000


@dataclass
class PrefixFetch:
    block_hashes: list[BlockHash]
    num_local_blocks: int  # already cached here before the fetch
    num_pulled_blocks: int  # brought in from the registry
    num_missing_blocks: int  # registry claimed them but could not serve them


class EngineWorker:
    def __init__(self, worker_id: str, engine: AsyncEngine, kvstore: KvStoreClient | None) -> None:
        self.worker_id = worker_id
        self.engine = engine
        self.kvstore = kvstore
        self.blocks = engine.engine.blocks
        self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{worker_id}-publish")
        # Child request ids whose blocks are published, with the trace context
        # of the call that asked, so the uploads show up in that request's trace.
        self._publishing: dict[str, otel_context.Context] = {}
        self._pending: dict[str, list[Future[None]]] = defaultdict(list)
        self._lock = threading.Lock()
        self.counters = defaultdict(int)
        engine.engine.step_listeners.append(self._after_step)

    # -- pulling -------------------------------------------------------------------

    def fetch_prefix(self, request_id: str, token_ids: list[int], max_blocks: int | None = None) -> PrefixFetch:
        """Pull the leading blocks of ``token_ids`` this engine lacks (at most ``max_blocks`` of them:
        the registry is known to hold no more)."""
        hashes = self.blocks.chain_hashes(token_ids)
        # The last prompt token is always recomputed, so its block never needs pulling.
        usable = hashes[: (len(token_ids) - 1) // self.blocks.kv_cache.block_size]
        if max_blocks is not None:
            usable = usable[:max_blocks]
        local = self.engine.call(lambda e: e.blocks.count_local(usable))
        fetch = PrefixFetch(hashes, local, 0, 0)
        if self.kvstore is None or local >= len(usable):
            return fetch
        wanted = usable[local:]
        try:
            items = self._pull(request_id, wanted)
        except KvStoreError as exc:
            # The registry is an accelerator, not a dependency: without it the
            # worker recomputes the prompt and still answers correctly.
            logger.warning("kvstore pull failed (%s); recomputing the prefix", type(exc).__name__)
            self.counters["registry_errors"] += 1
            return fetch
        payloads = []
        for item in items:
            if isinstance(item, BlockMiss):
                fetch.num_missing_blocks += 1
                break
            payloads.append(item.data)
        if payloads:
            now_local = self.engine.call(lambda e: e.blocks.preload(wanted[: len(payloads)], payloads))
            fetch.num_pulled_blocks = max(0, now_local - local)
        self.counters["pulled_blocks"] += fetch.num_pulled_blocks
        self.counters["missing_blocks"] += fetch.num_missing_blocks
        return fetch

    def _pull(self, request_id: str, wanted: list[BlockHash]) -> list[BlockPayload | BlockMiss]:
        assert self.kvstore is not None
        lease = self.kvstore.acquire(wanted, holder_id=f"{self.worker_id}/{request_id}", ttl_ms=PULL_LEASE_TTL_MS)
        if lease.num_acquired == 0:
            return []
        try:
            return self.kvstore.get_blocks(lease, wanted[: lease.num_acquired])
        finally:
            self.kvstore.release(lease)

    # -- publishing ----------------------------------------------------------------

    def publish(self, child_request_id: str) -> None:
        with self._lock:
            self._publishing[child_request_id] = otel_context.get_current()

    def wait_published(self, child_request_id: str, timeout: float = 60.0) -> int:
        """Block until the request's puts are done; returns how many failed.

        A failed put is not an error for the request: the decode side finds the
        block missing and recomputes it.
        """
        with self._lock:
            self._publishing.pop(child_request_id, None)
            pending = self._pending.pop(child_request_id, [])
        done, not_done = wait(pending, timeout=timeout)
        failed = len(not_done) + sum(1 for f in done if f.exception() is not None)
        if failed:
            logger.warning("%d block puts failed or timed out; decode will recompute those blocks", failed)
            self.counters["publish_errors"] += failed
        return failed

    def _after_step(self, step: SchedulerOutput) -> None:
        if self.kvstore is None:
            return
        with self._lock:
            contexts = dict(self._publishing)
        if not contexts:
            return
        by_request: dict[str, list[ExportedBlock]] = defaultdict(list)
        for block in self.blocks.computed_in(step, set(contexts)):
            by_request[block.request_id].append(block)
        for request_id, blocks in by_request.items():
            future = self._publisher.submit(self._put, blocks, contexts[request_id])
            with self._lock:
                self._pending[request_id].append(future)

    def _put(self, blocks: list[ExportedBlock], parent: otel_context.Context) -> None:
        assert self.kvstore is not None
        layout = self.blocks.layout
        with tracer.start_as_current_span("publish_blocks", context=parent) as span:
            span.set_attribute("tandem.blocks", len(blocks))
            self.kvstore.put_blocks(
                [BlockPayload(b.block_hash, b.parent_hash or b"", layout, b.payload) for b in blocks]
            )
        self.counters["published_blocks"] += len(blocks)

    def close(self) -> None:
        self._publisher.shutdown(wait=True)
