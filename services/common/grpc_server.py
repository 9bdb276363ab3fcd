"""Starting a gRPC server the way every tandem service does: health and reflection included."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.tracing import ServerTracing, traced_channel

# Large enough for a few KV blocks of a 70B model in one message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# A synchronous gRPC server runs every call on a thread of its pool, and a
# streaming call (Generate, Decode) holds its thread until the stream ends.
# With a pool no larger than the streams in flight, short calls (GetLoad,
# Abort, health) wait behind them: a worker that streams to as many requests
# as its pool has threads stops answering load polls and leaves rotation.
# Threads are started on demand, so a large bound costs nothing when idle.
STREAMING_MAX_WORKERS = 1024


@dataclass
class ServiceBinding:
    """One servicer and how to attach it: ``add(servicer, server)`` and its full service name."""

    servicer: Any
    add: Callable[[Any, grpc.Server], None]
    full_name: str


@dataclass
class RunningServer:
    server: grpc.Server
    address: str
    health: health.HealthServicer

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", status)

    def stop(self, grace: float | None = 1.0) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait()


def start_grpc_server(listen: str, services: Sequence[ServiceBinding],
                      max_workers: int = STREAMING_MAX_WORKERS) -> RunningServer:
    """Bind ``listen`` (``host:port``, port 0 picks a free one) and start serving."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=GRPC_OPTIONS,
                         interceptors=[ServerTracing()])
    for binding in services:
        binding.add(binding.servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.full_name for b in services] + [health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    host, _, _ = listen.rpartition(":")
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"could not bind {listen}")
    server.start()
    running = RunningServer(server, f"{host or '127.0.0.1'}:{port}", health_servicer)
    running.set_serving(True)
    return running


def channel(address: str) -> grpc.Channel:
    """A channel to another tandem service; calls on it carry the current trace context."""
    return traced_channel(grpc.insecure_channel(address, options=GRPC_OPTIONS))
