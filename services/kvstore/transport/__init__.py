"""Block transports: how payloads move between a client and the store.

``grpc`` streams the bytes inside the RPCs (any host); ``shm`` passes only
shared-memory references (same host). A GPU-direct transport would be a third
``Transport`` subclass with its own ``Transport`` enum value: the Put/Get
streams already carry a header plus either inline data or a reference, so it
needs a reference kind, not a new RPC.
"""

from __future__ import annotations

from services.kvstore.transport.base import Transport
from services.kvstore.transport.grpc_stream import GrpcStreamTransport
from services.kvstore.transport.shm import ShmTransport
from tandem._proto.tandem.v1 import kvstore_pb2_grpc

TRANSPORTS: dict[str, type[Transport]] = {cls.name: cls for cls in (GrpcStreamTransport, ShmTransport)}

__all__ = ["TRANSPORTS", "GrpcStreamTransport", "ShmTransport", "Transport", "make_transport"]


def make_transport(
    kind: str, stub: kvstore_pb2_grpc.KvStoreStub, *, timeout_s: float, producer_id: str
) -> Transport:
    """A transport by name: ``"grpc"`` or ``"shm"``."""
    cls = TRANSPORTS.get(kind)
    if cls is None:
        raise ValueError(f"unknown transport {kind!r}; expected one of {sorted(TRANSPORTS)}")
    return cls(stub, timeout_s=timeout_s, producer_id=producer_id)
