"""Metadata backends of the block registry: in-memory (embedded) and Redis."""

from __future__ import annotations

from services.kvstore.metadata.base import BlockMeta, LeaseRecord, MetadataBackend
from services.kvstore.metadata.memory import MemoryMetadata

__all__ = ["BlockMeta", "LeaseRecord", "MemoryMetadata", "MetadataBackend", "open_metadata"]


def open_metadata(spec: str, redis_prefix: str) -> MetadataBackend:
    """``"memory"`` or a ``redis://`` / ``rediss://`` / ``unix://`` URL."""
    if spec == "memory":
        return MemoryMetadata()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from services.kvstore.metadata.redis_backend import RedisMetadata

        return RedisMetadata(spec, redis_prefix)
    raise ValueError(f"metadata must be 'memory' or a redis:// URL, not {spec!r}")
