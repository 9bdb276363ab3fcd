"""The KvStore gRPC servicer: RPCs in, registry calls out, registry errors as statuses."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import grpc

from services.kvstore.errors import KvStoreError
from services.kvstore.put_stream import PutStream
from services.kvstore.registry import BlockRegistry
from services.kvstore.registry_types import BlockRead
from services.kvstore.shm import SegmentMapCache
from tandem._proto.tandem.v1 import kvstore_pb2, kvstore_pb2_grpc

logger = logging.getLogger(__name__)

# Payload bytes per GetChunk on the gRPC transport: large enough that per-message
# overhead is small, well under the 64 MiB message limit.
GET_CHUNK_BYTES = 2 * 1024 * 1024


@contextlib.contextmanager
def _as_status(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except KvStoreError as exc:
        context.abort(exc.code, str(exc))


class KvStoreServicer(kvstore_pb2_grpc.KvStoreServicer):
    def __init__(self, registry: BlockRegistry, get_chunk_bytes: int = GET_CHUNK_BYTES) -> None:
        self.registry = registry
        self._get_chunk_bytes = get_chunk_bytes
        # Producers' put segments, mapped once and reused across their puts.
        self._producer_segments = SegmentMapCache()

    def close(self) -> None:
        self._producer_segments.close()

    def Register(self, request: kvstore_pb2.RegisterRequest, context: grpc.ServicerContext) -> kvstore_pb2.RegisterResponse:
        worker = kvstore_pb2.WorkerInfo(worker_id=request.worker_id, role=request.role, address=request.address)
        with _as_status(context):
            identity = self.registry.mesh.register(worker, request.identity)
        logger.info("worker %s registered (role %s)", request.worker_id, kvstore_pb2.WorkerRole.Name(request.role))
        return kvstore_pb2.RegisterResponse(mesh_identity=identity)

    def ListWorkers(
        self, request: kvstore_pb2.ListWorkersRequest, context: grpc.ServicerContext
    ) -> kvstore_pb2.ListWorkersResponse:
        return kvstore_pb2.ListWorkersResponse(
            workers=self.registry.mesh.workers(), mesh_identity=self.registry.mesh.identity()
        )

    def Lookup(self, request: kvstore_pb2.LookupRequest, context: grpc.ServicerContext) -> kvstore_pb2.LookupResponse:
        return kvstore_pb2.LookupResponse(num_cached_blocks=self.registry.lookup(request.block_hashes))

    def Put(self, request_iterator: Iterable[kvstore_pb2.PutChunk], context: grpc.ServicerContext) -> kvstore_pb2.PutResponse:
        stream = PutStream(self.registry, self._producer_segments)
        with _as_status(context):
            return stream.consume(request_iterator)

    def Acquire(self, request: kvstore_pb2.AcquireRequest, context: grpc.ServicerContext) -> kvstore_pb2.AcquireResponse:
        grant = self.registry.acquire(request.block_hashes, request.holder_id, request.ttl_ms)
        return kvstore_pb2.AcquireResponse(
            lease_id=grant.lease_id, num_acquired=grant.num_acquired, expires_at_unix_ms=grant.expires_at_ms
        )

    def Get(self, request: kvstore_pb2.GetRequest, context: grpc.ServicerContext) -> Iterator[kvstore_pb2.GetChunk]:
        with _as_status(context):
            self.registry.check_lease(request.lease_id)
        served = []
        for block_hash in request.block_hashes:
            item = self.registry.open_read(request.lease_id, block_hash)
            if isinstance(item, kvstore_pb2.BlockMiss):
                yield kvstore_pb2.GetChunk(miss=item)
                continue
            try:
                yield kvstore_pb2.GetChunk(header=item.header)
                yield from self._payload(item, request.transport)
            finally:
                # The shm reader copies after this: from here on the lease alone pins the block.
                self.registry.close_read(item)
            served.append(block_hash)
        self.registry.touch(served)

    def _payload(self, read: BlockRead, transport: int) -> Iterator[kvstore_pb2.GetChunk]:
        if transport == kvstore_pb2.TRANSPORT_SHM:
            slot = read.block.slot
            yield kvstore_pb2.GetChunk(shm=kvstore_pb2.ShmRef(segment=slot.segment, offset=slot.offset, size=slot.size))
            return
        for start in range(0, len(read.view), self._get_chunk_bytes):
            yield kvstore_pb2.GetChunk(data=bytes(read.view[start : start + self._get_chunk_bytes]))

    def Release(self, request: kvstore_pb2.ReleaseRequest, context: grpc.ServicerContext) -> kvstore_pb2.ReleaseResponse:
        return kvstore_pb2.ReleaseResponse(released=self.registry.release(request.lease_id))

    def Stats(self, request: kvstore_pb2.StatsRequest, context: grpc.ServicerContext) -> kvstore_pb2.StatsResponse:
        return self.registry.stats()

    def WatchEvents(
        self, request: kvstore_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[kvstore_pb2.KvEvent]:
        # A cancelled watcher must not sit out a whole poll interval holding a thread.
        context.add_callback(self.registry.events.wake)
        yield from self.registry.events.watch(request.after_sequence, context.is_active)
