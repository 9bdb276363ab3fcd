"""The leases one store process granted, and the pin counts they put on blocks.

A block's reference count is the number of live leases naming it; a block
with a count above zero is never evicted. Not thread-safe: the registry uses
it under its lock.
"""

from __future__ import annotations

from collections import Counter

from services.kvstore.metadata import LeaseRecord


class LeaseTable:
    def __init__(self) -> None:
        self._leases: dict[str, LeaseRecord] = {}
        self._pins: Counter[bytes] = Counter()

    def add(self, lease: LeaseRecord) -> None:
        self._leases[lease.lease_id] = lease
        self._pins.update(lease.block_hashes)

    def remove(self, lease_id: str) -> LeaseRecord | None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._pins.subtract(lease.block_hashes)
            for block_hash in lease.block_hashes:
                if self._pins[block_hash] <= 0:
                    del self._pins[block_hash]
        return lease

    def live(self, lease_id: str, now_ms: int) -> LeaseRecord | None:
        """The lease if it exists and has not expired (the reaper may not have run yet)."""
        lease = self._leases.get(lease_id)
        return lease if lease is not None and lease.expires_at_ms > now_ms else None

    def pop_expired(self, now_ms: int) -> list[LeaseRecord]:
        expired = [lease_id for lease_id, lease in self._leases.items() if lease.expires_at_ms <= now_ms]
        return [lease for lease in map(self.remove, expired) if lease is not None]

    def ref_count(self, block_hash: bytes) -> int:
        return self._pins.get(block_hash, 0)

    def is_pinned(self, block_hash: bytes) -> bool:
        return self._pins.get(block_hash, 0) > 0

    def __len__(self) -> int:
        return len(self._leases)
