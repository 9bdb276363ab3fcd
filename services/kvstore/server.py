"""Starting and stopping a kvstore process.

Lifecycle of ``serve_kvstore``:
  1. Open the metadata backend and the payload tier (removing segments a
     killed predecessor with the same replica id left in /dev/shm).
  2. ``BlockRegistry.start``: join the backend, reload this replica's leases.
  3. Bind the gRPC server (KvStore, grpc.health.v1, reflection) and start the
     maintenance thread: expired leases reaped, heartbeat kept, dead
     replicas' locations swept.
  4. ``KvStoreServer.stop``: health NOT_SERVING, watchers woken, the server
     stopped, then the registry leaves the backend and unlinks its segments.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Self

from grpc_health.v1 import health_pb2

from services.common.grpc_server import RunningServer, ServiceBinding, start_grpc_server
from services.kvstore.metadata import open_metadata
from services.kvstore.payload_tier import DEFAULT_SEGMENT_BYTES, PayloadTier
from services.kvstore.registry import BlockRegistry
from services.kvstore.registry_types import DEFAULT_LEASE_TTL_MS, HEARTBEAT_TTL_MS, RegistryConfig
from services.kvstore.servicer import KvStoreServicer
from tandem._proto.tandem.v1 import kvstore_pb2, kvstore_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = kvstore_pb2.DESCRIPTOR.services_by_name["KvStore"].full_name
DEFAULT_REDIS_PREFIX = "tandem:{default}:"


@dataclass
class MaintenanceSchedule:
    interval_s: float = 0.5  # lease reaping; short TTLs are reaped within this much of expiring
    heartbeat_every: int = 4  # ticks between heartbeats (well inside HEARTBEAT_TTL_MS)
    sweep_every: int = 10  # ticks between dead-replica sweeps


class KvStoreServer:
    """A running kvstore: its address, its registry, and ``stop``."""

    def __init__(self, running: RunningServer, servicer: KvStoreServicer, schedule: MaintenanceSchedule) -> None:
        self._running = running
        self.servicer = servicer
        self.registry = servicer.registry
        self.address = running.address
        self._schedule = schedule
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._maintenance = threading.Thread(target=self._maintain, name="kvstore-maintenance", daemon=True)
        self._maintenance.start()

    @property
    def replica_id(self) -> str:
        return self.registry.config.replica_id

    def _maintain(self) -> None:
        tick = 0
        while not self._stopped.wait(self._schedule.interval_s):
            tick += 1
            try:
                expired = self.registry.reap_expired_leases()
                if expired:
                    logger.info("reaped %d expired leases", expired)
                if tick % self._schedule.heartbeat_every == 0:
                    self.registry.heartbeat()
                if tick % self._schedule.sweep_every == 0:
                    self.registry.sweep_dead_replicas()
            except Exception:  # a metadata hiccup must not end maintenance for good
                logger.exception("kvstore maintenance failed; retrying next tick")

    def stop(self, grace: float | None = 1.0) -> None:
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self._running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.registry.events.close()
        self._running.stop(grace)
        self._maintenance.join()
        self.servicer.close()
        self.registry.close()
        logger.info("kvstore %s stopped", self.replica_id)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``stop`` was called; False on timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def default_replica_id(listen: str) -> str:
    """``host:port`` for a fixed port, so a restart on the same port reclaims its predecessor's state."""
    port = listen.rpartition(":")[2]
    if port and port != "0":
        return f"{socket.gethostname()}:{port}"
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def serve_kvstore(
    listen: str = "127.0.0.1:0",
    *,
    capacity_bytes: int,
    metadata: str = "memory",
    redis_prefix: str = DEFAULT_REDIS_PREFIX,
    replica_id: str | None = None,
    default_lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
    heartbeat_ttl_ms: int = HEARTBEAT_TTL_MS,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    schedule: MaintenanceSchedule | None = None,
    max_workers: int = 64,
) -> KvStoreServer:
    """Start a kvstore on ``listen`` (``host:port``; port 0 picks a free one) and return its handle.

    ``metadata`` is ``"memory"`` or a ``redis://`` URL; with Redis, every key
    lives below ``redis_prefix``, and replicas sharing a prefix share a mesh.
    """
    if capacity_bytes <= 0:
        raise ValueError("capacity_bytes must be positive")
    replica_id = replica_id or default_replica_id(listen)
    config = RegistryConfig(capacity_bytes, replica_id, default_lease_ttl_ms, heartbeat_ttl_ms)
    backend = open_metadata(metadata, redis_prefix)
    try:
        tier = PayloadTier(replica_id, segment_bytes)
    except Exception:
        backend.close()
        raise
    if tier.removed_stale:
        logger.warning("removed %d shared-memory segments a dead predecessor left", len(tier.removed_stale))
    registry = BlockRegistry(config, backend, tier)
    servicer = KvStoreServicer(registry)
    binding = ServiceBinding(servicer, kvstore_pb2_grpc.add_KvStoreServicer_to_server, SERVICE_NAME)
    try:
        registry.start()
        running = start_grpc_server(listen, [binding], max_workers=max_workers)
    except Exception:
        # Whatever got this far must not outlive the failed start (segments, replica entry).
        servicer.close()
        registry.close()
        raise
    running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "kvstore %s listening on %s (capacity %d bytes, metadata %s)",
        replica_id, running.address, capacity_bytes, "redis" if metadata != "memory" else "memory",
    )
    return KvStoreServer(running, servicer, schedule or MaintenanceSchedule())
