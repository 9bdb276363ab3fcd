"""Shared-memory plumbing: segment names, stale segments, staging cleanup; the CLI's sizes; the measurement hook."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.kvstore.cli import parse_bytes
from services.kvstore.client import KvStoreClient
from services.kvstore.measure import measure_transfer
from services.kvstore.server import KvStoreServer
from services.kvstore.shm import SegmentMapCache, ShmError, ShmSegment, remove_stale_segments, segment_name
from tests.kvstore_helpers import LAYOUT, make_chain, tandem_segments

pytestmark = pytest.mark.usefixtures("no_shm_leaks")


def test_peers_cannot_name_files_outside_our_segments() -> None:
    cache = SegmentMapCache()
    for name in ("../etc/passwd", "tandem-x/../../y", "other-segment", ""):
        with pytest.raises(ShmError):
            cache.view(name, 0, 1)


def test_a_reference_outside_the_segment_is_refused() -> None:
    segment = ShmSegment.create(segment_name("test", "range"), 4096)
    cache = SegmentMapCache()
    try:
        assert len(cache.view(segment.name, 4000, 96)) == 96
        with pytest.raises(ShmError, match="outside segment"):
            cache.view(segment.name, 4000, 97)
    finally:
        cache.close()
        segment.unlink()
        segment.close()


def test_segments_of_dead_creators_are_removed_and_live_ones_kept() -> None:
    # A child creates a segment and dies without unlinking it.
    code = (
        "from services.kvstore.shm import ShmSegment, segment_name;"
        "print(ShmSegment.create(segment_name('test', 'stale'), 4096).name)"
    )
    orphan = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    live = ShmSegment.create(segment_name("test", "stale"), 4096)
    try:
        assert {orphan, live.name} <= tandem_segments()
        assert remove_stale_segments("test", "stale") == [orphan]
        assert orphan not in tandem_segments() and live.name in tandem_segments()
    finally:
        live.unlink()
        live.close()


def test_shm_clients_unlink_their_staging_segments(kvstore: KvStoreServer) -> None:
    client = KvStoreClient(kvstore.address, "shm", producer_id="staging-test")
    client.put_blocks(make_chain(4, seed=300))
    staging = {s for s in tandem_segments() if s.startswith("tandem-put-staging_test-")}
    assert staging  # kept for the next put
    client.close()
    assert not staging & tandem_segments()


def test_byte_sizes_parse_with_units() -> None:
    assert parse_bytes("1024") == 1024
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("8G") == 8 * 10**9
    assert parse_bytes("1.5gib") == 3 * 2**29
    with pytest.raises(Exception, match="not a byte size"):
        parse_bytes("lots")


def test_transfer_measurement_reports_both_transports() -> None:
    timings = measure_transfer(LAYOUT, num_blocks=8, repeats=1)
    assert [t.transport for t in timings] == ["grpc", "shm"]
    for timing in timings:
        assert timing.total_bytes == 8 * LAYOUT.size_bytes
        assert timing.put_mb_s > 0 and timing.get_mb_s > 0


def test_staging_segments_of_a_killed_producer_are_cleared_by_its_successor() -> None:
    from services.kvstore.shm import SHM_DIR
    from services.kvstore.transport.shm import _StagingPool

    dead = _a_dead_pid()
    leftover = SHM_DIR / f"tandem-put-worker_x-{dead}-0"
    leftover.write_bytes(b"\0" * 16)
    other_tag = SHM_DIR / f"tandem-put-worker_y-{dead}-0"
    other_tag.write_bytes(b"\0" * 16)
    try:
        _StagingPool("worker_x")
        assert not leftover.exists()
        assert other_tag.exists()  # another producer's name: left to that producer
    finally:
        leftover.unlink(missing_ok=True)
        other_tag.unlink(missing_ok=True)


def _a_dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
