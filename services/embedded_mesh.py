"""The whole mesh in one process: kvstore, one prefill and one decode worker, the router.

Each part is a real gRPC server on a loopback port, exactly as in a multi-process
deployment, so the embedded default exercises the same code paths.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from services.engine.config import EngineConfig
from services.kvstore.metrics import kvstore_metrics_registry
from services.kvstore.server import serve_kvstore
from services.router.admission import AdmissionLimits
from services.router.server import RouterSettings, RunningRouter, start_router
from services.worker.metrics import worker_metrics_registry
from services.worker.server import RunningWorker, WorkerConfig, start_worker

logger = logging.getLogger(__name__)

DEFAULT_KVSTORE_CAPACITY = 2 << 30


@dataclass
class EmbeddedMesh:
    kvstore: Any
    prefill: RunningWorker
    decode: RunningWorker
    router: RunningRouter

    @property
    def address(self) -> str:
        return self.router.address

    def metrics_registries(self) -> tuple[CollectorRegistry, ...]:
        """The router's, the workers' and the kvstore's metrics, for the gateway's one ``/metrics``."""
        workers = [self.prefill.worker] if self.prefill is self.decode else [self.prefill.worker, self.decode.worker]
        return (self.router.router.metrics.registry, worker_metrics_registry(workers),
                kvstore_metrics_registry(self.kvstore.registry))

    def stop(self) -> None:
        self.router.stop()
        self.decode.stop()
        if self.prefill is not self.decode:
            self.prefill.stop()
        self.kvstore.stop()


def start_embedded_mesh(
    engine: EngineConfig,
    router_listen: str = "127.0.0.1:0",
    served_model_names: list[str] | None = None,
    kvstore_capacity_bytes: int = DEFAULT_KVSTORE_CAPACITY,
    disagg_min_tokens: int = 32,
    kv_transport: str = "auto",
    kvstore_metadata: str = "memory",
    kvstore_redis_prefix: str | None = None,
    admission: AdmissionLimits | None = None,
    colocated: bool = False,
) -> EmbeddedMesh:
    """Start every part on loopback; ``kvstore_metadata`` is "memory" or a ``redis://`` URL.

    ``colocated`` runs one worker in both roles instead of a prefill and a
    decode worker: on a single GPU that keeps every prompt's KV where it was
    computed instead of copying it through the registry.
    """
    names = served_model_names or ["default"]
    extra = {"redis_prefix": kvstore_redis_prefix} if kvstore_redis_prefix else {}
    kvstore = serve_kvstore(
        "127.0.0.1:0", capacity_bytes=kvstore_capacity_bytes, metadata=kvstore_metadata, **extra
    )
    if colocated:
        prefill = decode = start_worker(WorkerConfig(
            role="both", kvstore=kvstore.address, worker_id="worker-0", served_model_name=names[0],
            kv_transport=kv_transport, engine=dataclasses.replace(engine),
        ))
        # One engine does both: a prefill hop would only copy the KV it already holds.
        disagg_min_tokens = sys.maxsize
    else:
        prefill = start_worker(WorkerConfig(
            role="prefill", kvstore=kvstore.address, worker_id="prefill-0", served_model_name=names[0],
            kv_transport=kv_transport, engine=dataclasses.replace(engine),
        ))
        decode = start_worker(WorkerConfig(
            role="decode", kvstore=kvstore.address, worker_id="decode-0", served_model_name=names[0],
            kv_transport=kv_transport, engine=dataclasses.replace(engine),
        ))
    router = start_router(RouterSettings(
        kvstore=kvstore.address, listen=router_listen, model=engine.model, served_model_names=names,
        max_model_len=engine.max_model_len, disagg_min_tokens=disagg_min_tokens,
        admission=admission or AdmissionLimits(),
    ))
    router.pool.wait_until_ready(timeout=30)
    return EmbeddedMesh(kvstore, prefill, decode, router)
