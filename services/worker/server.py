"""Starting a worker process: engine, registry client, gRPC services, registration.

A worker serves PrefillWorker, DecodeWorker or both (colocated) on one port.
It registers with the kvstore after binding; a refusal (another model, dtype,
block size or layout than the mesh's) stops the worker with the store's message
before it ever takes a request.
"""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass, field

from services.common.grpc_server import RunningServer, ServiceBinding, start_grpc_server
from services.decode.servicer import DecodeServicer
from services.engine.async_engine import AsyncEngine
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.kvstore.client import KvStoreClient
from services.kvstore.layout import ModelIdentity
from services.prefill.servicer import PrefillServicer
from services.worker.engine_worker import EngineWorker
from tandem._proto.tandem.v1 import worker_pb2, worker_pb2_grpc

logger = logging.getLogger(__name__)

ROLES = ("prefill", "decode", "both")


@dataclass
class WorkerConfig:
    role: str
    listen: str = "127.0.0.1:0"
    kvstore: str | None = None
    # "auto": shared memory when the kvstore is on this host, gRPC streaming otherwise.
    kv_transport: str = "auto"
    served_model_name: str = "default"
    worker_id: str = field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:8]}")
    engine: EngineConfig = field(default_factory=EngineConfig)
    # host:port routers dial, registered with the kvstore; None: the bound
    # address, with a wildcard host (0.0.0.0, ::) replaced by this host's name.
    advertise: str | None = None


@dataclass
class RunningWorker:
    config: WorkerConfig
    server: RunningServer
    worker: EngineWorker

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        self.server.stop()
        self.worker.engine.shutdown()
        self.worker.close()


def advertised_address(bound: str) -> str:
    """``bound`` as other hosts can dial it: a wildcard host means "every interface", never a place."""
    host, _, port = bound.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        return f"{socket.getfqdn()}:{port}"
    return bound


def model_identity(engine: LLMEngine, served_model_name: str) -> ModelIdentity:
    return ModelIdentity(engine.model_config.fingerprint, engine.blocks.layout, served_model_name)


def start_worker(config: WorkerConfig) -> RunningWorker:
    if config.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {config.role!r}")
    engine = LLMEngine(config.engine)
    async_engine = AsyncEngine(engine, name=f"{config.worker_id}-engine").start()
    kvstore = (
        KvStoreClient(config.kvstore, transport=config.kv_transport, producer_id=config.worker_id)
        if config.kvstore
        else None
    )
    worker = EngineWorker(config.worker_id, async_engine, kvstore)
    services = []
    if config.role in ("prefill", "both"):
        services.append(ServiceBinding(
            PrefillServicer(worker), worker_pb2_grpc.add_PrefillWorkerServicer_to_server,
            worker_pb2.DESCRIPTOR.services_by_name["PrefillWorker"].full_name,
        ))
    if config.role in ("decode", "both"):
        services.append(ServiceBinding(
            DecodeServicer(worker), worker_pb2_grpc.add_DecodeWorkerServicer_to_server,
            worker_pb2.DESCRIPTOR.services_by_name["DecodeWorker"].full_name,
        ))
    server = start_grpc_server(config.listen, services)
    running = RunningWorker(config, server, worker)
    if kvstore is not None:
        try:
            kvstore.register(
                worker_id=config.worker_id,
                role=config.role,
                address=config.advertise or advertised_address(server.address),
                identity=model_identity(engine, config.served_model_name),
            )
        except Exception:
            running.stop()
            raise
    logger.info("%s worker %s serving on %s", config.role, config.worker_id, server.address)
    return running
