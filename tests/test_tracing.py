"""One request, one trace: client -> router -> prefill worker -> kvstore -> decode worker.

The embedded mesh runs every service as a real gRPC server, so the spans here
crossed real calls: the context travels in each call's metadata, and into the
threads that work for the request (block uploads).
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.embedded_mesh import start_embedded_mesh
from services.engine.config import EngineConfig
from tandem import SamplingParams
from tandem.client import AsyncTandemClient
from tests.mesh_harness import MeshClient, wait_until

PARAMS = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
ALLOWED_ATTRIBUTES = {"tandem.request_id", "tandem.prompt_tokens", "tandem.n", "tandem.worker_id",
                      "tandem.responses", "tandem.blocks"}


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
def mesh(tiny_checkpoints):
    config = EngineConfig(model=str(tiny_checkpoints["qwen2"]), dtype="float32", num_kv_blocks=256,
                          max_model_len=512)
    mesh = start_embedded_mesh(config, kv_transport="grpc", disagg_min_tokens=16)
    yield mesh
    mesh.stop()


def _trace_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def _parent_name(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> str | None:
    parent = by_id.get(span.parent.span_id) if span.parent is not None else None
    return parent.name if parent is not None else None


def test_one_trace_spans_every_hop(spans, mesh) -> None:
    client = MeshClient(mesh.address, mesh.kvstore.address)
    prompt = [random.Random(3).randrange(3, 700) for _ in range(90)]
    with trace.get_tracer("test").start_as_current_span("client") as root:
        client.generate(prompt, PARAMS, request_id="traced-1")
    mesh.prefill.worker.close()  # block uploads done
    mine = _trace_of(spans, root.get_span_context().trace_id)
    by_id = {s.context.span_id: s for s in mine}
    names = {s.name for s in mine}
    assert {"tandem.v1.Router/Generate", "tandem.v1.PrefillWorker/Prefill", "tandem.v1.DecodeWorker/Decode",
            "publish_blocks", "tandem.v1.KvStore/Put", "tandem.v1.KvStore/Acquire", "tandem.v1.KvStore/Get",
            "tandem.v1.KvStore/Lookup"} <= names
    parents = {s.name: _parent_name(s, by_id) for s in mine}
    assert parents["tandem.v1.Router/Generate"] == "client"
    assert parents["tandem.v1.PrefillWorker/Prefill"] == "tandem.v1.Router/Generate"
    assert parents["tandem.v1.DecodeWorker/Decode"] == "tandem.v1.Router/Generate"
    assert parents["publish_blocks"] == "tandem.v1.PrefillWorker/Prefill"
    assert parents["tandem.v1.KvStore/Put"] == "publish_blocks"
    assert parents["tandem.v1.KvStore/Get"] == "tandem.v1.DecodeWorker/Decode"
    assert parents["tandem.v1.KvStore/Lookup"] == "tandem.v1.Router/Generate"
    router_span = next(s for s in mine if s.name == "tandem.v1.Router/Generate")
    assert router_span.attributes["tandem.request_id"] == "traced-1"
    assert router_span.attributes["tandem.prompt_tokens"] == len(prompt)
    # Ids and counts only: no prompt or output content rides along.
    assert {key for s in mine for key in s.attributes} <= ALLOWED_ATTRIBUTES


def test_the_asyncio_client_sends_its_context(spans, mesh) -> None:
    async def call() -> int:
        async with AsyncTandemClient(mesh.address) as client:
            with trace.get_tracer("test").start_as_current_span("async-client") as root:
                async for _ in client.generate([5, 6, 7, 8], PARAMS):
                    pass
            return root.get_span_context().trace_id

    trace_id = asyncio.run(call())
    mine = _trace_of(spans, trace_id)
    assert "tandem.v1.Router/Generate" in {s.name for s in mine}


def test_an_http_request_is_the_root_of_its_trace(spans, mesh) -> None:
    from services.gateway.app import build_app
    from services.gateway.server import start_gateway_thread

    tokenizer = mesh.router.servicer.tokenizer
    gateway = start_gateway_thread(build_app(mesh.address, tokenizer, ["tiny"]), "127.0.0.1", 0)
    try:
        response = httpx.post(f"{gateway.url}/v1/completions", timeout=60,
                              json={"model": "tiny", "prompt": [5, 6, 7, 8], "max_tokens": 3, "temperature": 0})
        assert response.status_code == 200
    finally:
        gateway.stop()
    finished = spans.get_finished_spans()
    http = [s for s in finished if s.name == "POST /v1/completions"]
    assert http and http[-1].attributes["http.response.status_code"] == 200
    mine = _trace_of(spans, http[-1].context.trace_id)
    by_id = {s.context.span_id: s for s in mine}
    router_spans = [s for s in mine if s.name == "tandem.v1.Router/Generate"]
    assert router_spans
    # The HTTP span is the router call's ancestor (FastAPI may add its own spans between).
    ancestors, span = [], router_spans[0]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        ancestors.append(span.name)
    assert ancestors[-1] == "POST /v1/completions"


def test_configured_console_export_names_the_service(tmp_path) -> None:
    from services.common.grpc_server import channel
    from tandem._proto.tandem.v1 import kvstore_pb2, kvstore_pb2_grpc
    from tests.mesh_harness import start_service

    env_process = start_service("kvstore-traced", ["kvstore", "--listen", "127.0.0.1:0"], tmp_path,
                                env={"TANDEM_TRACE_EXPORTER": "console"})
    try:
        kvstore_pb2_grpc.KvStoreStub(channel(env_process.address)).Stats(kvstore_pb2.StatsRequest(), timeout=10)
    finally:
        env_process.stop()
    # The batch processor flushes at exit; the log's reader thread may lag the exit a little.
    log_file = tmp_path / "kvstore-traced.log"
    assert wait_until(lambda: '"name": "tandem.v1.KvStore/Stats"' in log_file.read_text(), timeout=10)
    assert '"service.name": "tandem-kvstore"' in log_file.read_text()


@pytest.mark.parametrize("exporter", ["bogus", "otlp"])
def test_an_unusable_exporter_is_a_clear_error(monkeypatch, exporter: str) -> None:
    from services.common.tracing import configure_tracing

    if exporter == "otlp":
        try:
            import opentelemetry.exporter.otlp  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("the OTLP exporter is installed here, so otlp is usable")
    monkeypatch.setenv("TANDEM_TRACE_EXPORTER", exporter)
    provider = trace.get_tracer_provider()
    with pytest.raises(ValueError, match="otlp"):
        configure_tracing("tandem-test")
    assert trace.get_tracer_provider() is provider  # nothing was installed


def test_no_exporter_installs_nothing(monkeypatch) -> None:
    from services.common.tracing import configure_tracing

    monkeypatch.delenv("TANDEM_TRACE_EXPORTER", raising=False)
    assert configure_tracing("tandem-test") is False
