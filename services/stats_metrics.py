"""Prometheus metrics read off a service's typed stats messages at scrape time.

The kvstore and the workers already answer their state as protobuf messages
(``StatsResponse``, ``WorkerLoad``) for the router and for operators. Their
``/metrics`` reads the same messages when scraped, so the numbers a scrape
shows and the numbers the mesh acts on cannot drift apart, and a scrape costs
the service nothing between scrapes. Each numeric field becomes one metric
family, ``tandem:<prefix>_<field>``. The fields named as counters are
monotonic totals and are exposed as counters (``..._total``); the rest are
gauges. A string field named as a label tells samples apart, so several
workers in one process share one family per field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
}


class StatsCollector(Collector):
    """One metric family per numeric field of the messages ``read`` returns, one sample per message."""

    def __init__(self, prefix: str, read: Callable[[], Sequence[Message]], *,
                 counters: frozenset[str], label: str) -> None:
        self.prefix = prefix
        self.read = read
        self.counters = counters
        self.label = label

    def collect(self) -> Iterator[Metric]:
        messages = list(self.read())
        if not messages:
            return
        descriptor = messages[0].DESCRIPTOR
        for field in descriptor.fields:
            if field.type not in _NUMERIC or field.is_repeated:
                continue
            name = f"tandem:{self.prefix}_{field.name}"
            doc = f"{descriptor.name}.{field.name}"
            family_type = CounterMetricFamily if field.name in self.counters else GaugeMetricFamily
            family = family_type(name, doc, labels=[self.label])
            for message in messages:
                family.add_metric([str(getattr(message, self.label))], float(getattr(message, field.name)))
            yield family


def stats_registry(prefix: str, read: Callable[[], Sequence[Message]], *,
                   counters: frozenset[str], label: str) -> CollectorRegistry:
    """A registry of its own holding one :class:`StatsCollector`."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(prefix, read, counters=counters, label=label))
    return registry


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> int:
    """Prometheus text on http://HOST:PORT/metrics from a daemon thread; returns the bound port (0 picks one)."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    print(f"tandem metrics listening on http://{host}:{bound}/metrics", flush=True)
    return bound


def listen_host(listen: str) -> str:
    """The host part of a ``host:port`` listen address (IPv6 brackets dropped)."""
    host = listen.rsplit(":", 1)[0]
    return host.strip("[]") or "0.0.0.0"


class RemoteMetrics(Collector):
    """Other processes' ``/metrics``, fetched at scrape time and merged family by family.

    ``tandem serve --processes`` runs each service in its own process; its
    gateway's ``/metrics`` shows theirs through this. Families of one name from
    several processes (two workers' ``tandem:worker_*``) become one family, as
    Prometheus needs; a process that does not answer within ``timeout_s`` is
    left out of that scrape.
    """

    def __init__(self, urls: Sequence[str], timeout_s: float = 2.0) -> None:
        self.urls = list(urls)
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        import urllib.error
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        merged: dict[str, Metric] = {}
        for url in self.urls:
            try:
                with opener.open(url, timeout=self.timeout_s) as response:
                    text = response.read().decode()
            except (urllib.error.URLError, OSError):
                continue
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                else:
                    into.samples.extend(family.samples)
        yield from merged.values()


def remote_metrics_registry(urls: Sequence[str]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RemoteMetrics(urls))
    return registry
