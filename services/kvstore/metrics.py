"""The kvstore's Prometheus metrics: its ``StatsResponse``, read off the registry at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.kvstore.registry import BlockRegistry
from services.stats_metrics import stats_registry

# Totals since the process started (counters are per replica); the rest are current levels.
KVSTORE_COUNTERS = frozenset({
    "lookups", "lookup_hit_blocks", "lookup_query_blocks", "puts", "duplicate_puts", "gets", "evictions",
    "checksum_failures", "payload_misses", "expired_leases",
})


def kvstore_metrics_registry(registry: BlockRegistry) -> CollectorRegistry:
    """``tandem:kvstore_*`` families, one sample per process (label ``replica_id``)."""
    return stats_registry("kvstore", lambda: [registry.stats()], counters=KVSTORE_COUNTERS, label="replica_id")
