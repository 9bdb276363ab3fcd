"""Errors of the block registry, one class per gRPC status code.

The same classes are raised by the registry core (the servicer turns them into
statuses) and by ``KvStoreClient`` (which turns statuses back into them), so a
caller handles e.g. ``StoreFullError`` the same way in process and over gRPC.
"""

from __future__ import annotations

import grpc

from services.engine.errors import TandemError


class KvStoreError(TandemError):
    """Base class; ``code`` is the gRPC status the condition travels as."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidBlockError(KvStoreError, ValueError):
    """A request is malformed: bad hash length, size not matching the layout, bad shm reference."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class MeshMismatchError(KvStoreError):
    """A worker's model identity, or a block's layout, differs from the mesh's."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class StoreFullError(KvStoreError):
    """The block does not fit even after evicting every unpinned block."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class LeaseNotFoundError(KvStoreError, LookupError):
    """The lease is unknown: never granted, released, or expired."""

    code = grpc.StatusCode.NOT_FOUND


class CorruptPayloadError(KvStoreError):
    """A payload does not match its sha256 checksum."""

    code = grpc.StatusCode.DATA_LOSS


class KvStoreUnavailableError(KvStoreError, ConnectionError):
    """The store cannot be reached (or did not answer in time)."""

    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE: dict[grpc.StatusCode, type[KvStoreError]] = {
    cls.code: cls
    for cls in (
        InvalidBlockError,
        MeshMismatchError,
        StoreFullError,
        LeaseNotFoundError,
        CorruptPayloadError,
        KvStoreUnavailableError,
    )
}
_BY_CODE[grpc.StatusCode.DEADLINE_EXCEEDED] = KvStoreUnavailableError


def error_from_rpc(exc: grpc.RpcError) -> KvStoreError:
    """The registry error matching a failed call's status (``KvStoreError`` for unmapped codes)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    cls = _BY_CODE.get(code, KvStoreError)
    error = cls(f"{code.name}: {details}")
    error.code = code
    return error
