"""The Redis metadata backend (redis-py): metadata that outlives a store and is shared by replicas.

Keys, all below one prefix (e.g. ``tandem:{mesh}:``; the braces keep a mesh's
keys in one Redis Cluster slot):

    identity             the mesh's ModelIdentity (protobuf bytes), set once (SET NX)
    workers              hash: worker id -> WorkerInfo (protobuf bytes)
    block:<hex>          hash: parent, size, checksum, layout (BlockLayout bytes), producer, last_access
    at:<hex>             set: replica ids holding the payload
    held:<replica>       set: hex hashes a replica holds (so its locations can be forgotten)
    lease:<id>           hash: holder, replica, hashes (concatenated), expires_at; expires itself
    leases:<replica>     set: lease ids a replica granted
    replicas, alive:<r>  known replicas; a heartbeat key whose expiry means "dead"
    seq, events          event counter; sorted set of "<seq>:<KvEvent bytes>" scored by seq

Location changes and their events happen in one Lua script, so the event
order is the order of the changes, across replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import redis

from services.kvstore.errors import KvStoreUnavailableError
from services.kvstore.layout import HASH_BYTES
from services.kvstore.metadata.base import (
    EVENT_LOG_LIMIT,
    BlockMeta,
    LeaseRecord,
    MetadataBackend,
    removed_event,
    stored_event,
)
from services.kvstore.metadata.redis_scripts import DELETE_LEASE, DROPPED, STORED, TOUCH
from tandem._proto.tandem.v1 import common_pb2, kvstore_pb2

# Metadata of a block whose payload was lost with a process is kept this long,
# so readers learn "lost" rather than "never stored"; then it expires.
DEFAULT_ORPHAN_TTL_MS = 3_600_000
# A lease key outlives its expiry by this much, in case no replica reaps it.
LEASE_KEY_GRACE_MS = 60_000


class RedisMetadata(MetadataBackend):
    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        orphan_ttl_ms: int = DEFAULT_ORPHAN_TTL_MS,
        event_log_limit: int = EVENT_LOG_LIMIT,
    ) -> None:
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            self._redis.ping()  # fail at start-up, not on the first request
        except redis.RedisError as exc:
            self._redis.close()
            parts = urlsplit(url)
            where = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # no password in messages
            raise KvStoreUnavailableError(f"cannot reach Redis at {where}: {exc}") from exc
        self._orphan_ttl_ms = orphan_ttl_ms
        self._event_log_limit = event_log_limit
        self._stored = self._redis.register_script(STORED)
        self._dropped = self._redis.register_script(DROPPED)
        self._touch = self._redis.register_script(TOUCH)
        self._delete_lease = self._redis.register_script(DELETE_LEASE)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _block_keys(self, block_hash: bytes, replica_id: str) -> list[str]:
        hex_hash = block_hash.hex()
        return [
            self._key("block", hex_hash),
            self._key("at", hex_hash),
            self._key("held", replica_id),
            self._key("seq"),
            self._key("events"),
        ]

    def _event(self, template: kvstore_pb2.KvEvent, sequence: int) -> kvstore_pb2.KvEvent | None:
        if not sequence:
            return None
        template.sequence = int(sequence)
        return template

    # -- mesh identity and membership ------------------------------------------------

    def claim_identity(self, identity: common_pb2.ModelIdentity) -> common_pb2.ModelIdentity:
        self._redis.set(self._key("identity"), identity.SerializeToString(), nx=True)
        found = self.identity()
        assert found is not None  # just set, or set by someone before us
        return found

    def identity(self) -> common_pb2.ModelIdentity | None:
        raw = self._redis.get(self._key("identity"))
        return common_pb2.ModelIdentity.FromString(raw) if raw is not None else None

    def put_worker(self, worker: kvstore_pb2.WorkerInfo) -> None:
        self._redis.hset(self._key("workers"), worker.worker_id, worker.SerializeToString())

    def workers(self) -> list[kvstore_pb2.WorkerInfo]:
        raw = self._redis.hgetall(self._key("workers"))
        return [kvstore_pb2.WorkerInfo.FromString(raw[k]) for k in sorted(raw)]

    # -- blocks ----------------------------------------------------------------------

    def block_stored(self, meta: BlockMeta, replica_id: str) -> kvstore_pb2.KvEvent | None:
        template = stored_event(meta)
        sequence = self._stored(
            keys=self._block_keys(meta.block_hash, replica_id),
            args=[
                replica_id,
                meta.block_hash.hex(),
                template.SerializeToString(),
                self._event_log_limit,
                meta.last_access_ms,
                meta.parent_hash,
                meta.size_bytes,
                meta.checksum,
                meta.layout.SerializeToString(),
                meta.producer_id,
            ],
        )
        return self._event(template, sequence)

    def block_dropped(
        self, block_hash: bytes, replica_id: str, *, keep_metadata: bool
    ) -> kvstore_pb2.KvEvent | None:
        template = removed_event(block_hash)
        sequence = self._dropped(
            keys=self._block_keys(block_hash, replica_id),
            args=[
                replica_id,
                block_hash.hex(),
                template.SerializeToString(),
                self._event_log_limit,
                1 if keep_metadata else 0,
                self._orphan_ttl_ms,
            ],
        )
        return self._event(template, sequence)

    def block_meta(self, block_hash: bytes) -> BlockMeta | None:
        raw = self._redis.hgetall(self._key("block", block_hash.hex()))
        if not raw:
            return None
        return BlockMeta(
            block_hash=block_hash,
            parent_hash=raw[b"parent"],
            size_bytes=int(raw[b"size"]),
            checksum=raw[b"checksum"],
            layout=common_pb2.BlockLayout.FromString(raw[b"layout"]),
            producer_id=raw[b"producer"].decode(),
            last_access_ms=int(raw[b"last_access"]),
        )

    def block_locations(self, block_hash: bytes) -> set[str]:
        return {m.decode() for m in self._redis.smembers(self._key("at", block_hash.hex()))}

    def touch(self, block_hashes: Sequence[bytes], now_ms: int) -> None:
        if block_hashes:
            self._touch(keys=[self._key("block", h.hex()) for h in block_hashes], args=[now_ms])

    # -- leases ----------------------------------------------------------------------

    def put_lease(self, lease: LeaseRecord) -> None:
        key = self._key("lease", lease.lease_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "holder": lease.holder_id,
                    "replica": lease.replica_id,
                    "hashes": b"".join(lease.block_hashes),
                    "expires_at": lease.expires_at_ms,
                },
            )
            pipe.pexpireat(key, lease.expires_at_ms + LEASE_KEY_GRACE_MS)
            pipe.sadd(self._key("leases", lease.replica_id), lease.lease_id)
            pipe.execute()

    def delete_lease(self, lease_id: str) -> None:
        self._delete_lease(keys=[self._key("lease", lease_id)], args=[self.prefix, lease_id])

    def leases_of(self, replica_id: str) -> list[LeaseRecord]:
        ids = sorted(m.decode() for m in self._redis.smembers(self._key("leases", replica_id)))
        with self._redis.pipeline(transaction=False) as pipe:
            for lease_id in ids:
                pipe.hgetall(self._key("lease", lease_id))
            rows = pipe.execute()
        leases = []
        for lease_id, raw in zip(ids, rows):
            if not raw:  # the key expired on its own
                self._redis.srem(self._key("leases", replica_id), lease_id)
                continue
            hashes = raw[b"hashes"]
            leases.append(
                LeaseRecord(
                    lease_id=lease_id,
                    holder_id=raw[b"holder"].decode(),
                    replica_id=raw[b"replica"].decode(),
                    block_hashes=tuple(hashes[i : i + HASH_BYTES] for i in range(0, len(hashes), HASH_BYTES)),
                    expires_at_ms=int(raw[b"expires_at"]),
                )
            )
        return leases

    # -- replicas --------------------------------------------------------------------

    def _forget_payloads(self, replica_id: str) -> list[kvstore_pb2.KvEvent]:
        held = self._redis.smembers(self._key("held", replica_id))
        events = [
            self.block_dropped(bytes.fromhex(h.decode()), replica_id, keep_metadata=True) for h in sorted(held)
        ]
        return [event for event in events if event is not None]

    def _forget_leases(self, replica_id: str) -> None:
        for lease_id in self._redis.smembers(self._key("leases", replica_id)):
            self._redis.delete(self._key("lease", lease_id.decode()))
        self._redis.delete(self._key("leases", replica_id))

    def join(self, replica_id: str, heartbeat_ttl_ms: int) -> list[kvstore_pb2.KvEvent]:
        self._redis.sadd(self._key("replicas"), replica_id)
        self._redis.set(self._key("alive", replica_id), b"1", px=heartbeat_ttl_ms)
        return self._forget_payloads(replica_id)

    def heartbeat(self, replica_id: str, heartbeat_ttl_ms: int) -> bool:
        self._redis.sadd(self._key("replicas"), replica_id)
        previous = self._redis.set(self._key("alive", replica_id), b"1", px=heartbeat_ttl_ms, get=True)
        return previous is not None

    def sweep_dead_replicas(self) -> list[kvstore_pb2.KvEvent]:
        events: list[kvstore_pb2.KvEvent] = []
        for member in self._redis.smembers(self._key("replicas")):
            replica_id = member.decode()
            if not self._redis.exists(self._key("alive", replica_id)):
                events += self._forget_payloads(replica_id)
                self._forget_leases(replica_id)
                self._redis.srem(self._key("replicas"), replica_id)
        return events

    def leave(self, replica_id: str) -> list[kvstore_pb2.KvEvent]:
        events = self._forget_payloads(replica_id)
        self._forget_leases(replica_id)
        self._redis.srem(self._key("replicas"), replica_id)
        self._redis.delete(self._key("alive", replica_id))
        return events

    # -- events ----------------------------------------------------------------------

    def events_after(self, sequence: int, limit: int) -> list[kvstore_pb2.KvEvent]:
        members = self._redis.zrangebyscore(self._key("events"), f"({sequence}", "+inf", start=0, num=limit)
        events = []
        for member in members:
            head, _, body = member.partition(b":")
            event = kvstore_pb2.KvEvent.FromString(body)
            event.sequence = int(head)
            events.append(event)
        return events

    def close(self) -> None:
        self._redis.close()
