"""The router's Prometheus metrics (``tandem:`` namespace, vLLM-like names).

The router sees every request of the mesh, whether it came over gRPC or
through the HTTP gateway, so request latencies and token counts are measured
here. Gauges about the workers are read at scrape time from the loads the
worker pool polls (``WorkerLoad``), so a scrape never waits on a worker.
Each router owns a registry of its own (several routers can share a process
in tests): ``registry`` is what an HTTP ``/metrics`` endpoint renders.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.router.admission import AdmissionController
from services.router.worker_pool import WorkerPool
from tandem._proto.tandem.v1 import common_pb2

# Seconds; spans a tiny CPU model's milliseconds to a long prompt's minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
                         0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "tandem:time_to_first_token_seconds", "Router: Generate call to its first token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "tandem:inter_token_latency_seconds", "Router: time between consecutive tokens of a sample.",
            buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e_request_latency = Histogram(
            "tandem:e2e_request_latency_seconds", "Router: Generate call to its last token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.request_queue_time = Histogram(
            "tandem:request_queue_time_seconds", "Router: time a request spent admitted without a first token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tandem:prompt_tokens", "Prompt tokens of admitted requests.", registry=r)
        self.generation_tokens = Counter("tandem:generation_tokens", "Tokens generated.", registry=r)
        self.request_success = Counter(
            "tandem:request_success", "Requests that finished, by finish reason.", ["finished_reason"], registry=r)
        self.request_failure = Counter(
            "tandem:request_failure", "Requests that ended with an error, by gRPC status code.", ["code"],
            registry=r)
        self.admission_rejections = Counter(
            "tandem:admission_rejections", "Requests refused by admission control, by bound.", ["reason"],
            registry=r)
        self.prefix_cache_queries = Counter(
            "tandem:prefix_cache_queries", "Prompt tokens looked up in the kvstore.", registry=r)
        self.prefix_cache_hits = Counter(
            "tandem:prefix_cache_hits", "Prompt tokens the kvstore already held.", registry=r)
        self.num_requests_running = Gauge(
            "tandem:num_requests_running", "Requests streaming tokens.", registry=r)
        self.num_requests_waiting = Gauge(
            "tandem:num_requests_waiting", "Requests admitted without a first token yet.", registry=r)
        self.kv_cache_usage = Gauge(
            "tandem:kv_cache_usage_perc", "Fraction (0-1) of the workers' KV blocks in use.", registry=r)
        self.prefix_cache_hit_rate = Gauge(
            "tandem:prefix_cache_hit_rate", "Fraction (0-1) of looked-up prompt tokens the kvstore held.",
            registry=r)
        self.prefill_throughput = Gauge(
            "tandem:prefill_throughput_tokens_per_second",
            "Measured rate at which the mesh drains queued prompt tokens (admission control's estimate).",
            registry=r)
        self.healthy_workers = Gauge(
            "tandem:num_healthy_workers", "Workers answering load polls, by role.", ["role"], registry=r)
        self._hit_tokens = 0
        self._queried_tokens = 0
        self._lookup_lock = threading.Lock()  # samples of many requests report at once
        self.prefix_cache_hit_rate.set_function(self._hit_rate)

    def _hit_rate(self) -> float:
        return self._hit_tokens / self._queried_tokens if self._queried_tokens else 0.0

    def observe_prefix_lookup(self, prompt_tokens: int, cached_tokens: int) -> None:
        with self._lookup_lock:
            self._queried_tokens += prompt_tokens
            self._hit_tokens += cached_tokens
        self.prefix_cache_queries.inc(prompt_tokens)
        self.prefix_cache_hits.inc(cached_tokens)

    def bind_sources(self, pool: WorkerPool, admission: AdmissionController) -> None:
        """Read the gauges that mirror the worker pool and the admission queue at scrape time."""
        self.kv_cache_usage.set_function(lambda: kv_cache_usage(pool.healthy_loads()))
        self.num_requests_waiting.set_function(lambda: admission.num_queued)
        self.prefill_throughput.set_function(lambda: admission.prefill_tokens_per_s or 0.0)
        for role in ("prefill", "decode"):
            self.healthy_workers.labels(role).set_function(lambda role=role: len(pool.healthy(role)))


def kv_cache_usage(loads: list[common_pb2.WorkerLoad]) -> float:
    """Fraction of all the workers' KV blocks that are in use."""
    total = sum(load.num_total_kv_blocks for load in loads)
    free = sum(load.num_free_kv_blocks for load in loads)
    return 1.0 - free / total if total else 0.0
