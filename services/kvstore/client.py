"""``KvStoreClient``: a worker's synchronous, thread-safe handle on the kvstore.

Control calls are plain unary RPCs; payloads go through the chosen transport
(``"grpc"`` anywhere, ``"shm"`` when the store is on this host). Failures
raise the ``services.kvstore.errors`` class of their gRPC status.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Self, TypeVar

import grpc

from services.common.grpc_server import channel
from services.kvstore.errors import KvStoreUnavailableError, error_from_rpc
from services.kvstore.layout import ModelIdentity, identity_from_proto, identity_to_proto
from services.kvstore.payload import (
    ROLE_NAMES,
    ROLES,
    BlockMiss,
    BlockPayload,
    Lease,
    MeshMembers,
    PutResult,
    WorkerInfo,
)
from services.kvstore.transport import make_transport
from tandem._proto.tandem.v1 import common_pb2, kvstore_pb2, kvstore_pb2_grpc

__all__ = ["BlockMiss", "BlockPayload", "EventWatch", "KvStoreClient", "Lease", "PutResult"]

_Response = TypeVar("_Response")


class EventWatch:
    """A live WatchEvents stream: iterate for ``KvEvent``s; ``cancel`` (or leave the ``with``) to stop."""

    def __init__(self, call: grpc.Call) -> None:
        self._call = call

    def __iter__(self) -> Iterator[kvstore_pb2.KvEvent]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise error_from_rpc(exc) from None

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def same_host(address: str) -> bool:
    """Whether the store at ``address`` shares this host's shared memory (loopback addresses)."""
    host = address.rpartition(":")[0]
    return (host in _LOOPBACK_HOSTS or host.startswith("127.")) and os.path.isdir("/dev/shm")


class KvStoreClient:
    def __init__(
        self,
        address: str,
        transport: str = "auto",
        *,
        timeout_s: float = 30.0,
        producer_id: str | None = None,
    ) -> None:
        """``producer_id`` names this client in stored blocks' metadata (default ``host/pid``)."""
        self.address = address
        self.producer_id = producer_id or f"{socket.gethostname()}/{os.getpid()}"
        self._timeout_s = timeout_s
        self._channel = channel(address)
        self._stub = kvstore_pb2_grpc.KvStoreStub(self._channel)
        if transport == "auto":
            transport = "shm" if same_host(address) else "grpc"
        self.transport = make_transport(transport, self._stub, timeout_s=timeout_s, producer_id=self.producer_id)

    def _call(self, method: Callable[..., _Response], request: object) -> _Response:
        try:
            return method(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel is connected; ``KvStoreUnavailableError`` after ``timeout_s``."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise KvStoreUnavailableError(f"kvstore at {self.address} not reachable in {timeout_s} s") from None

    # -- mesh ------------------------------------------------------------------------

    def register(
        self, worker_id: str, role: str, address: str, identity: ModelIdentity | None
    ) -> ModelIdentity | None:
        """Join the mesh; returns the mesh identity. ``MeshMismatchError`` names any differing field.

        ``role`` is "prefill", "decode", "both" or "router"; only a router may
        pass ``identity=None``.
        """
        request = kvstore_pb2.RegisterRequest(
            worker_id=worker_id,
            role=ROLES[role],
            address=address,
            identity=identity_to_proto(identity) if identity is not None else common_pb2.ModelIdentity(),
        )
        response = self._call(self._stub.Register, request)
        return identity_from_proto(response.mesh_identity) if response.HasField("mesh_identity") else None

    def list_workers(self) -> MeshMembers:
        response = self._call(self._stub.ListWorkers, kvstore_pb2.ListWorkersRequest())
        workers = [WorkerInfo(w.worker_id, ROLE_NAMES.get(w.role, "unspecified"), w.address) for w in response.workers]
        identity = identity_from_proto(response.mesh_identity) if response.HasField("mesh_identity") else None
        return MeshMembers(workers, identity)

    # -- blocks ----------------------------------------------------------------------

    def lookup(self, block_hashes: Sequence[bytes]) -> int:
        """How many leading blocks of the chain the store can serve now."""
        request = kvstore_pb2.LookupRequest(block_hashes=block_hashes)
        return self._call(self._stub.Lookup, request).num_cached_blocks

    def put_blocks(self, blocks: Sequence[BlockPayload]) -> PutResult:
        """Store blocks (chain order preferred: the store then evicts a chain tail first)."""
        return self.transport.put_blocks(blocks)

    def acquire(self, block_hashes: Sequence[bytes], holder_id: str, ttl_ms: int = 0) -> Lease:
        """Pin the leading stored blocks of the chain for ``ttl_ms`` (0: the store's default)."""
        request = kvstore_pb2.AcquireRequest(block_hashes=block_hashes, holder_id=holder_id, ttl_ms=ttl_ms)
        response = self._call(self._stub.Acquire, request)
        pinned = tuple(block_hashes[: response.num_acquired])
        return Lease(response.lease_id, response.num_acquired, response.expires_at_unix_ms, pinned)

    def get_blocks(self, lease: Lease, block_hashes: Sequence[bytes] | None = None) -> list[BlockPayload | BlockMiss]:
        """Payloads of leased blocks (default: all the lease pins), checksums verified on arrival."""
        hashes = lease.block_hashes if block_hashes is None else block_hashes
        if not hashes:
            return []
        return list(self.transport.get_blocks(lease, hashes))

    def release(self, lease: Lease) -> bool:
        """Drop the lease; False when it was unknown (already released or expired)."""
        if not lease.lease_id:
            return False
        return self._call(self._stub.Release, kvstore_pb2.ReleaseRequest(lease_id=lease.lease_id)).released

    def stats(self) -> kvstore_pb2.StatsResponse:
        return self._call(self._stub.Stats, kvstore_pb2.StatsRequest())

    def watch_events(self, after_sequence: int = 0) -> EventWatch:
        """Stored/removed events after ``after_sequence`` (0: all retained), then live ones."""
        return EventWatch(self._stub.WatchEvents(kvstore_pb2.WatchEventsRequest(after_sequence=after_sequence)))

    def close(self) -> None:
        self.transport.close()
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
