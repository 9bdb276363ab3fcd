"""Mesh membership: the model identity every worker must share, and the worker list."""

from __future__ import annotations

import threading

from services.kvstore.errors import InvalidBlockError, MeshMismatchError
from services.kvstore.layout import DTYPE_NAMES, identity_mismatches, layout_size_bytes
from services.kvstore.metadata import MetadataBackend
from tandem._proto.tandem.v1 import common_pb2, kvstore_pb2


class MeshMembership:
    def __init__(self, metadata: MetadataBackend) -> None:
        self._metadata = metadata
        self._identity: common_pb2.ModelIdentity | None = None
        self._lock = threading.Lock()

    def identity(self) -> common_pb2.ModelIdentity | None:
        """The mesh identity; cached once set, since it never changes afterwards."""
        with self._lock:
            if self._identity is None:
                self._identity = self._metadata.identity()
            return self._identity

    def register(
        self, worker: kvstore_pb2.WorkerInfo, identity: common_pb2.ModelIdentity
    ) -> common_pb2.ModelIdentity | None:
        """Admit a worker; the first one with an identity sets the mesh's.

        A router holds no KV, so it may register without an identity; every
        other role must bring one, and it must equal the mesh's.
        """
        if not worker.worker_id:
            raise InvalidBlockError("worker_id is empty")
        has_identity = bool(identity.model_fingerprint)
        if not has_identity:
            if worker.role != kvstore_pb2.WORKER_ROLE_ROUTER:
                raise InvalidBlockError("only a router may register without a model identity")
            self._metadata.put_worker(worker)
            return self.identity()
        if identity.layout.dtype not in DTYPE_NAMES or layout_size_bytes(identity.layout) == 0:
            raise InvalidBlockError("the identity's block layout is incomplete (dtype and every size must be set)")
        mesh = self._metadata.claim_identity(identity)
        mismatches = identity_mismatches(mesh, identity)
        if mismatches:
            raise MeshMismatchError(
                f"worker {worker.worker_id!r} cannot join: its model identity differs from the mesh's ("
                + "; ".join(mismatches)
                + ")"
            )
        with self._lock:
            self._identity = mesh
        self._metadata.put_worker(worker)
        return mesh

    def workers(self) -> list[kvstore_pb2.WorkerInfo]:
        return self._metadata.workers()
