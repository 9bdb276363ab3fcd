"""POSIX shared-memory segments as files under /dev/shm, and a cache of mapped ones.

Python's ``multiprocessing.shared_memory`` is not used: on 3.11 every process
that attaches a segment registers it with its resource tracker, which unlinks
the segment when *that* process exits, pulling it from under the owner. Here
only the creator ever unlinks.

Segment names are ``tandem-<kind>-<tag>-<pid>-<n>``: the creator's pid lets a
restarted store remove the segments a killed predecessor left behind.
Space is reserved with ``posix_fallocate`` at creation, so a full /dev/shm is
an error at allocation instead of a SIGBUS on first write.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# What a peer may name in a ShmRef: no path separators, only our own segments.
_VALID_NAME = re.compile(r"^tandem-[A-Za-z0-9_.-]{1,200}$")
_counter = itertools.count()
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux only


class ShmError(OSError):
    """A segment cannot be created or attached."""


def _name_prefix(kind: str, tag: str) -> str:
    # "-" separates the name's fields, so the tag may not contain one.
    safe_tag = re.sub(r"[^A-Za-z0-9_.]", "_", tag)[:64] or "x"
    return f"tandem-{kind}-{safe_tag}-"


def segment_name(kind: str, tag: str) -> str:
    """A fresh segment name; ``tag`` is sanitized to file-name-safe characters."""
    return f"{_name_prefix(kind, tag)}{os.getpid()}-{next(_counter)}"


def validate_name(name: str) -> None:
    if not _VALID_NAME.match(name):
        raise ShmError(errno.EINVAL, f"not a tandem shared-memory segment name: {name!r}")


class ShmSegment:
    """One mapped segment. The creator owns it and unlinks it; attachers only map it."""

    def __init__(self, name: str, mapping: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.size = len(mapping)
        self._mmap = mapping
        self.owner = owner

    @classmethod
    def create(cls, name: str, size: int) -> ShmSegment:
        validate_name(name)
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            raise ShmError(exc.errno, f"cannot create shared memory {path}: {exc.strerror}") from exc
        try:
            os.posix_fallocate(fd, 0, size)
            # Populating the page tables now moves the page faults of the first
            # writes (a third of a put's time on a fresh segment) to creation.
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _MAP_POPULATE)
        except OSError as exc:
            os.unlink(path)
            raise ShmError(exc.errno, f"cannot reserve {size} bytes of shared memory: {exc.strerror}") from exc
        finally:
            os.close(fd)  # the mapping stays valid; holding fds would hit the open-file limit
        return cls(name, mapping, owner=True)

    @classmethod
    def attach(cls, name: str, writable: bool = False) -> ShmSegment:
        validate_name(name)
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as exc:
            raise ShmError(
                exc.errno, f"cannot open shared memory segment {name!r} (is the peer on this host?): {exc.strerror}"
            ) from exc
        try:
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return cls(name, mapping, owner=False)

    def buffer(self) -> memoryview:
        return memoryview(self._mmap)

    def exists(self) -> bool:
        return (SHM_DIR / self.name).exists()

    def close(self) -> None:
        """Unmap; a view still exported keeps the mapping alive until it is garbage."""
        try:
            self._mmap.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        """Remove the name (owners only); memory is freed once every mapping is gone."""
        try:
            os.unlink(SHM_DIR / self.name)
        except FileNotFoundError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_segments(kind: str, tag: str) -> list[str]:
    """Unlink ``tandem-<kind>-<tag>-*`` segments whose creating process is gone."""
    prefix = _name_prefix(kind, tag)
    removed = []
    for path in SHM_DIR.glob(prefix + "*"):
        pid_text = path.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


class SegmentMapCache:
    """Read-only mappings of a peer's segments, reused across calls, bounded in number.

    A peer frees a segment by unlinking it; a mapping kept here would pin that
    memory, so each miss also drops mappings whose name is gone.
    """

    def __init__(self, max_segments: int = 8, writable: bool = False) -> None:
        self._max = max_segments
        self._writable = writable
        self._maps: OrderedDict[str, ShmSegment] = OrderedDict()
        self._lock = threading.Lock()

    def view(self, name: str, offset: int, size: int) -> memoryview:
        """``size`` bytes at ``offset`` of segment ``name``; raises ``ShmError`` when out of range."""
        with self._lock:
            segment = self._maps.get(name)
            if segment is None:
                for stale in [s for s in self._maps.values() if not s.exists()]:
                    self._maps.pop(stale.name).close()
                segment = ShmSegment.attach(name, self._writable)
                self._maps[name] = segment
                while len(self._maps) > self._max:
                    self._maps.popitem(last=False)[1].close()
            self._maps.move_to_end(name)
        if offset < 0 or size < 0 or offset + size > segment.size:
            raise ShmError(errno.EINVAL, f"range {offset}+{size} is outside segment {name!r} of {segment.size} bytes")
        return segment.buffer()[offset : offset + size]

    def close(self) -> None:
        with self._lock:
            for segment in self._maps.values():
                segment.close()
            self._maps.clear()
