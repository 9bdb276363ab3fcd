"""A worker's load as the router sees it."""

from __future__ import annotations

from services.worker.engine_worker import EngineWorker
from tandem._proto.tandem.v1 import common_pb2


def worker_load(worker: EngineWorker) -> common_pb2.WorkerLoad:
    # Read without the engine thread: plain attribute reads of counters that
    # may be one step stale are fine for placement.
    engine = worker.engine.engine
    scheduler = engine.scheduler
    pending = sum(r.num_tokens - r.num_computed_tokens for r in list(scheduler.waiting))
    pool = engine.kv_cache.pool
    return common_pb2.WorkerLoad(
        worker_id=worker.worker_id,
        num_running=len(scheduler.running),
        num_waiting=len(scheduler.waiting),
        num_free_kv_blocks=pool.num_free_blocks,
        num_total_kv_blocks=pool.num_blocks,
        num_pending_tokens=pending,
        prefill_computed_tokens=worker.counters["prefilled_tokens"],
        prefill_cached_tokens=worker.counters["prefill_cached_tokens"],
        pulled_blocks=worker.counters["pulled_blocks"],
        published_blocks=worker.counters["published_blocks"],
        missing_blocks=worker.counters["missing_blocks"],
    )
