"""Starting the router: tokenizer, mesh identity from the kvstore, worker discovery, gRPC service.

The router learns the mesh's model fingerprint and block size from the
kvstore (set by the first worker that registered), so its block hashes are
the ones the workers compute. Workers come from static addresses or from the
kvstore's registry; the KV event stream keeps the prefill locality map fresh.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2

from services.common.grpc_server import RunningServer, ServiceBinding, start_grpc_server
from services.engine.models.checkpoint import load_model_metadata
from services.engine.models.default_model import default_model_path
from services.engine.tokenizer import load_tokenizer
from services.kvstore.client import KvStoreClient
from services.kvstore.errors import KvStoreError
from services.kvstore.layout import ModelIdentity
from services.router.admission import AdmissionLimits
from services.router.router import Router, RouterConfig
from services.router.servicer import RouterServicer
from services.router.worker_pool import WorkerPool
from tandem._proto.tandem.v1 import router_pb2, router_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass
class RouterSettings:
    kvstore: str
    listen: str = "127.0.0.1:0"
    model: str | None = None
    served_model_names: list[str] = field(default_factory=lambda: ["default"])
    max_model_len: int | None = None
    # Static peers as (address, role) where role is "prefill", "decode" or "both".
    peers: list[tuple[str, str]] = field(default_factory=list)
    disagg_min_tokens: int = 32
    identity_timeout_s: float = 120.0
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)


@dataclass
class RunningRouter:
    server: RunningServer
    router: Router
    pool: WorkerPool
    kvstore: KvStoreClient
    servicer: RouterServicer

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        self.pool.stop()
        self.server.stop()


def _wait_for_mesh_identity(kvstore: KvStoreClient, timeout_s: float) -> ModelIdentity:
    deadline = time.monotonic() + timeout_s
    while True:
        identity = kvstore.list_workers().identity
        if identity is not None:
            return identity
        if time.monotonic() > deadline:
            raise TimeoutError("no worker registered with the kvstore; the mesh has no model yet")
        time.sleep(0.2)


def _follow_events(kvstore: KvStoreClient, router: Router) -> None:
    """Keep the prefill locality map in step with what workers put and the store evicts."""
    sequence = 0
    while True:
        try:
            for event in kvstore.watch_events(after_sequence=sequence):
                sequence = event.sequence
                kind = event.WhichOneof("event")
                if kind == "stored" and event.stored.producer_id:
                    router.prefill_locality.record([event.stored.block_hash], event.stored.producer_id)
                elif kind == "removed":
                    router.prefill_locality.forget(event.removed.block_hash)
        except (grpc.RpcError, KvStoreError):
            time.sleep(1.0)


def _publish_health(server: RunningServer, pool: WorkerPool, service_name: str) -> None:
    """The Router service reports SERVING on the standard health service only while a
    decode worker is healthy: that is when a Generate call can be served."""

    def update() -> None:
        serving = bool(pool.healthy("decode"))
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        server.health.set(service_name, status)

    update()
    pool.listeners.append(update)


def start_router(settings: RouterSettings) -> RunningRouter:
    path = settings.model or default_model_path()
    checkpoint = load_model_metadata(path)
    tokenizer = load_tokenizer(checkpoint.tokenizer_source)
    max_model_len = settings.max_model_len or checkpoint.hf_config.max_position_embeddings
    kvstore = KvStoreClient(settings.kvstore)
    identity = _wait_for_mesh_identity(kvstore, settings.identity_timeout_s)

    def discover() -> list[tuple[str, str, str]]:
        return [(w.worker_id, w.address, w.role) for w in kvstore.list_workers().workers]

    pool = WorkerPool(discover=None if settings.peers else discover)
    for address, role in settings.peers:
        pool.add(address, address, role)
    pool.start()
    config = RouterConfig(
        disagg_min_tokens=settings.disagg_min_tokens,
        block_size=identity.layout.block_size,
        model_fingerprint=identity.model_fingerprint,
        admission=settings.admission,
    )
    router = Router(pool, kvstore, config)
    threading.Thread(target=_follow_events, args=(kvstore, router), name="router-kv-events", daemon=True).start()
    servicer = RouterServicer(
        router, tokenizer, settings.served_model_names, max_model_len, checkpoint.hf_config.vocab_size
    )
    service_name = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
    server = start_grpc_server(settings.listen, [ServiceBinding(
        servicer, router_pb2_grpc.add_RouterServicer_to_server, service_name,
    )])
    _publish_health(server, pool, service_name)
    logger.info("router serving on %s", server.address)
    return RunningRouter(server, router, pool, kvstore, servicer)
