"""A worker's Prometheus metrics: its ``WorkerLoad``, the message the router polls, read at scrape time."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from services.stats_metrics import stats_registry
from services.worker.engine_worker import EngineWorker
from services.worker.load import worker_load

# Totals since the worker started; the other fields are current levels.
WORKER_COUNTERS = frozenset({
    "prefill_computed_tokens", "prefill_cached_tokens", "pulled_blocks", "published_blocks", "missing_blocks",
})


def worker_metrics_registry(workers: Sequence[EngineWorker]) -> CollectorRegistry:
    """``tandem:worker_*`` families with one sample per worker (label ``worker_id``)."""
    return stats_registry("worker", lambda: [worker_load(w) for w in workers],
                          counters=WORKER_COUNTERS, label="worker_id")
