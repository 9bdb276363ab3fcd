"""Prometheus metrics of the kvstore and the workers, read off their typed stats messages."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client import generate_latest

from services.stats_metrics import listen_host, stats_registry
from services.worker.metrics import WORKER_COUNTERS
from tandem._proto.tandem.v1 import common_pb2
from tests.gateway_harness import METRICS_LINE, parse_metrics, wait_for_line
from tests.mesh_harness import start_service


def test_counters_and_gauges_with_one_sample_per_message() -> None:
    loads = [
        common_pb2.WorkerLoad(worker_id="prefill-0", num_running=2, num_total_kv_blocks=100, pulled_blocks=7),
        common_pb2.WorkerLoad(worker_id="decode-0", num_running=5, num_total_kv_blocks=80, published_blocks=3),
    ]
    registry = stats_registry("worker", lambda: loads, counters=WORKER_COUNTERS, label="worker_id")
    text = generate_latest(registry).decode()
    assert "# TYPE tandem:worker_pulled_blocks_total counter" in text
    assert "# TYPE tandem:worker_num_running gauge" in text
    samples = parse_metrics(text)
    assert samples[("tandem:worker_num_running", (("worker_id", "prefill-0"),))] == 2
    assert samples[("tandem:worker_num_running", (("worker_id", "decode-0"),))] == 5
    assert samples[("tandem:worker_pulled_blocks_total", (("worker_id", "prefill-0"),))] == 7
    assert samples[("tandem:worker_published_blocks_total", (("worker_id", "decode-0"),))] == 3
    # The label's own field is not a metric.
    assert not any(name.startswith("tandem:worker_worker_id") for name, _ in samples)
    # Read at scrape time: a later scrape sees new values.
    loads[0].num_running = 9
    assert parse_metrics(generate_latest(registry).decode())[("tandem:worker_num_running", (("worker_id", "prefill-0"),))] == 9


def test_listen_host() -> None:
    assert listen_host("127.0.0.1:50051") == "127.0.0.1"
    assert listen_host("[::1]:0") == "::1"
    assert listen_host(":50051") == "0.0.0.0"


def test_served_metrics_include_workers_and_kvstore(served, client) -> None:
    # Long enough to fill KV blocks, which the router then looks up in the kvstore.
    prompt = "The harbour town woke slowly on winter mornings. " * 8
    client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=4, temperature=0)
    samples = served.metrics()
    workers = {dict(labels)["worker_id"] for name, labels in samples if name == "tandem:worker_num_total_kv_blocks"}
    assert workers == {"prefill-0", "decode-0"}
    assert all(v == 512 for (name, _), v in samples.items() if name == "tandem:worker_num_total_kv_blocks")
    capacity = [v for (name, _), v in samples.items() if name == "tandem:kvstore_capacity_bytes"]
    assert capacity and capacity[0] > 0
    assert sum(v for (name, _), v in samples.items() if name == "tandem:kvstore_lookups_total") >= 1


def test_kvstore_process_serves_metrics_on_its_port(tmp_path: Path) -> None:
    process = start_service("kvstore-metrics", ["kvstore", "--listen", "127.0.0.1:0", "--metrics-port", "0"], tmp_path)
    try:
        url = wait_for_line(process, METRICS_LINE)
        samples = parse_metrics(httpx.get(url + "/metrics", timeout=10).text)
        assert [v for (name, _), v in samples.items() if name == "tandem:kvstore_num_blocks"] == [0.0]
        assert any(name == "tandem:kvstore_puts_total" for name, _ in samples)
    finally:
        process.stop()


def test_worker_process_serves_metrics_on_its_port(tiny_checkpoints, tmp_path: Path) -> None:
    process = start_service("worker-metrics", [
        "worker", "--model", str(tiny_checkpoints["llama"]), "--dtype", "float32", "--num-kv-blocks", "64",
        "--max-model-len", "64", "--listen", "127.0.0.1:0", "--worker-id", "w-7", "--metrics-port", "0",
    ], tmp_path)
    try:
        url = wait_for_line(process, METRICS_LINE)
        samples = parse_metrics(httpx.get(url + "/metrics", timeout=10).text)
        assert samples[("tandem:worker_num_total_kv_blocks", (("worker_id", "w-7"),))] == 64
        assert samples[("tandem:worker_num_running", (("worker_id", "w-7"),))] == 0
    finally:
        process.stop()


def test_remote_metrics_merge_families_of_several_processes() -> None:
    from services.stats_metrics import remote_metrics_registry, serve_metrics

    ports = []
    for worker_id, running in (("a", 1), ("b", 2)):
        load = common_pb2.WorkerLoad(worker_id=worker_id, num_running=running)
        registry = stats_registry("worker", lambda load=load: [load], counters=WORKER_COUNTERS, label="worker_id")
        ports.append(serve_metrics("127.0.0.1", 0, registry))
    urls = [f"http://127.0.0.1:{port}/metrics" for port in ports] + ["http://127.0.0.1:9/metrics"]  # one dead
    text = generate_latest(remote_metrics_registry(urls)).decode()
    # One family per name, as Prometheus requires, holding both processes' samples.
    assert text.count("# TYPE tandem:worker_num_running gauge") == 1
    assert text.count("# TYPE tandem:worker_pulled_blocks_total counter") == 1
    samples = parse_metrics(text)
    assert samples[("tandem:worker_num_running", (("worker_id", "a"),))] == 1
    assert samples[("tandem:worker_num_running", (("worker_id", "b"),))] == 2
    assert samples[("tandem:worker_pulled_blocks_total", (("worker_id", "b"),))] == 0
