"""The append log: every accepted batch is written here before the daemon acknowledges it.

A log is a series of segment files ``log-00000001.wal``, ``log-00000002.wal``, ... Each starts
with :data:`MAGIC` and a JSON header (contract version, bundle identity), followed by one entry
per accepted batch. An entry is ``<u32 length><u32 crc32><payload>`` where the payload is the
batch's canonical contract frame as an Arrow IPC stream (binary, typed, no pickle). A crash can
only tear the end of the newest segment; :func:`read_segment` stops there and reports how many
bytes to cut. A snapshot starts a new segment, so older segments can be deleted once the
snapshot is safely on disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from workbench.errors import StateError

MAGIC = b"WBLOG1\n"
FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
SEGMENT_RE = re.compile(r"^log-(\d{8})\.wal$")
log = logging.getLogger(__name__)


def segment_path(directory: Path, number: int) -> Path:
    """Return the path of segment ``number`` in ``directory``."""
    return directory / f"log-{number:08d}.wal"


def segments(directory: Path) -> list[int]:
    """Return the numbers of the segments in ``directory``, oldest first."""
    found = (SEGMENT_RE.match(p.name) for p in directory.iterdir()) if directory.is_dir() else iter(())
    return sorted(int(m.group(1)) for m in found if m)


def fsync_dir(directory: Path) -> None:
    """Make a file creation, rename or removal in ``directory`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_frame(frame: pl.DataFrame) -> bytes:
    """Return one log entry (header and Arrow IPC payload) for ``frame``."""
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer)
    return _entry(buffer.getvalue())


def _entry(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


ARROW_MARK = b"\xff\xff\xff\xff"  # every Arrow IPC stream (an entry's payload) starts with it


class SegmentHeaderError(StateError):
    """A segment whose magic or header is missing or damaged.

    Attributes:
        holds_data: Whether valid entries follow the damage (acknowledged batches that a
            start must not drop); ``False`` for the empty or half-written file a crash between
            creating a segment and writing its header leaves.
    """

    def __init__(self, message: str, holds_data: bool) -> None:
        super().__init__(message)
        self.holds_data = holds_data


@dataclass(frozen=True)
class Damage:
    """Bytes of a segment that :meth:`Segment.frames` could not read as entries.

    Attributes:
        offset: Byte where the unreadable span starts.
        length: Bytes skipped.
        kind: ``torn`` (an entry cut short at the end of the file: a crash during its write,
            so never acknowledged) or ``corrupt`` (complete bytes that fail their checksum:
            acknowledged data that was damaged afterwards).
        records: Records the skipped entry held, read without its checksum (``None``: unreadable).
    """

    offset: int
    length: int
    kind: str
    records: int | None = None


class Segment:
    """One segment file read back: its header, then every entry that passes its checksum.

    A damaged entry does not end the reading: the next valid entry after it is found (every
    payload starts with the Arrow stream mark and carries a CRC), and the skipped bytes are
    listed in :attr:`damage`. Nothing here changes the file.

    Args:
        path: The segment file.

    Raises:
        SegmentHeaderError: when the file does not start with a valid header.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = path.read_bytes()
        header = _payload_at(self._data, len(MAGIC)) if self._data.startswith(MAGIC) else None
        if header is None:
            what = "bad magic" if not self._data.startswith(MAGIC) else "damaged segment header"
            holds = _next_entry(self._data, 0) is not None
            size = f"{len(self._data)} bytes" + (", with valid entries after it" if holds else ", no entries")
            raise SegmentHeaderError(f"{path}: not a workbench log segment ({what}; {size})", holds)
        try:
            self.header: dict[str, Any] = json.loads(header)
        except ValueError as exc:
            raise SegmentHeaderError(f"{path}: unreadable segment header: {exc}", True) from exc
        self._start = len(MAGIC) + FRAME.size + len(header)
        self.damage: list[Damage] = []

    def frames(self) -> Iterator[pl.DataFrame]:
        """Yield the readable batches in order; afterwards :attr:`damage` lists what was skipped."""
        data, pos = self._data, self._start
        self.damage = []
        while pos < len(data):
            payload = _payload_at(data, pos)
            if payload is None:
                following = _next_entry(data, pos + 1)
                end = len(data) if following is None else following
                kind = "torn" if following is None and _cut_short(data, pos) else "corrupt"
                self.damage.append(Damage(pos, end - pos, kind, _records_unchecked(data, pos, end)))
                pos = end
                continue
            yield pl.read_ipc_stream(io.BytesIO(payload))
            pos += FRAME.size + len(payload)

    @property
    def torn_bytes(self) -> int:
        """Bytes of an entry cut short at the end (never acknowledged; 0 when none)."""
        return sum(d.length for d in self.damage if d.kind == "torn")

    @property
    def corrupt(self) -> list[Damage]:
        """Spans of acknowledged data that fail their checksum."""
        return [d for d in self.damage if d.kind == "corrupt"]


def _payload_at(data: bytes, pos: int) -> bytes | None:
    if pos + FRAME.size > len(data):
        return None
    length, crc = FRAME.unpack_from(data, pos)
    payload = data[pos + FRAME.size : pos + FRAME.size + length]
    if length == 0 or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return payload


def _next_entry(data: bytes, start: int) -> int | None:
    """The first position at or after ``start`` where a whole, valid entry begins."""
    mark = data.find(ARROW_MARK, start + FRAME.size)
    while mark >= 0:
        pos = mark - FRAME.size
        if _payload_at(data, pos) is not None:
            return pos
        mark = data.find(ARROW_MARK, mark + 1)
    return None


def scan_entries(data: bytes, start: int = 0) -> Iterator[bytes]:
    """Yield the payload of every valid entry at or after ``start``, skipping whatever is damaged."""
    pos = _next_entry(data, start)
    while pos is not None:
        payload = _payload_at(data, pos)
        assert payload is not None
        yield payload
        following = pos + FRAME.size + len(payload)
        pos = following if _payload_at(data, following) is not None else _next_entry(data, following)


def _cut_short(data: bytes, pos: int) -> bool:
    """Whether the entry at ``pos`` runs past the end of the file (what a crash mid-write leaves)."""
    if pos + FRAME.size > len(data):
        return True
    length, _ = FRAME.unpack_from(data, pos)
    return pos + FRAME.size + length > len(data)


def _records_unchecked(data: bytes, pos: int, end: int) -> int | None:
    """Rows of a damaged entry when its payload still parses (its checksum failed), else ``None``."""
    try:
        return pl.read_ipc_stream(io.BytesIO(data[pos + FRAME.size : end])).height
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 (any parse failure, a Rust panic included, means: unknown)
        return None


class Journal:
    """Writes accepted batches to the current segment; thread-safe with a caller-held write lock.

    :meth:`append` and :meth:`rotate` must be called under the caller's ingest lock (so the log
    order is the ingest order); :meth:`sync` is called outside it, and one ``fsync`` covers every
    entry written before it (group commit).

    Args:
        directory: The state folder.
        header: JSON header written at the start of every segment.
        fsync: Whether :meth:`sync` calls ``os.fsync``.
        first_segment: Number of the first segment to create.
    """

    def __init__(self, directory: Path, header: dict[str, Any], *, fsync: bool, first_segment: int) -> None:
        self.directory = directory
        self.header = header
        self.fsync = fsync
        self._sync_lock = threading.Lock()
        self._written = 0  # entries written (all segments)
        self._synced = 0  # entries known to be on disk
        self._broken: str | None = None
        self.segment = first_segment
        self._next = first_segment + 1
        self.segment_bytes = 0
        self._fd = self._create(first_segment)

    def _create(self, number: int) -> int:
        """Create segment ``number`` with its header; a failure removes the half-made file and raises ``OSError``."""
        path = segment_path(self.directory, number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        head = MAGIC + _entry(json.dumps({**self.header, "segment": number}).encode())
        try:
            _write_all(fd, head)
            if self.fsync:
                os.fsync(fd)
                fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):  # a file without a whole header holds nothing acknowledged
                path.unlink()
            raise
        self.segment_bytes = len(head)
        return fd

    def append(self, frame: pl.DataFrame) -> int:
        """Write one batch (call under the ingest lock) and return its sequence number for :meth:`sync`.

        Raises:
            StateError: when the log cannot be written (the partial entry is removed, and the
                journal refuses further writes if even that fails).
        """
        if self._broken:
            raise StateError(self._broken)
        entry = encode_frame(frame)
        try:
            _write_all(self._fd, entry)
        except OSError as exc:
            self._undo(exc)
            raise StateError(f"cannot write the append log: {exc}") from exc
        self.segment_bytes += len(entry)
        self._written += 1
        return self._written

    def _undo(self, exc: OSError) -> None:
        try:
            os.ftruncate(self._fd, self.segment_bytes)
        except OSError as again:
            self._broken = f"the append log is damaged after a failed write ({exc}; truncating: {again})"
            log.error(self._broken)

    def sync(self, upto: int) -> None:
        """Return once entry ``upto`` (and every earlier one) is on disk."""
        if not self.fsync:
            return
        with self._sync_lock:
            if self._synced >= upto:
                return
            target = self._written  # every entry counted here was fully written before this read
            os.fsync(self._fd)
            self._synced = target

    def rotate(self) -> int:
        """Start the next segment (call under the ingest lock) and return its number.

        The next file is made before the current one is closed, so a failure (a full disk)
        leaves the journal writing where it was; numbers only grow, so a failed number is
        never reused for a file that could be confused with it.

        Raises:
            StateError: when the next segment cannot be created.
        """
        with self._sync_lock:
            self._next = max(self._next, self.segment + 1)
            number, self._next = self._next, self._next + 1
            previous_bytes = self.segment_bytes
            try:
                fd = self._create(number)
            except OSError as exc:
                self.segment_bytes = previous_bytes
                raise StateError(f"cannot start log segment {number}: {exc}") from exc
            old = self._fd
            if self.fsync:
                os.fsync(old)
            os.close(old)
            self._fd, self.segment = fd, number
            self._synced = self._written
        return self.segment

    def close(self) -> None:
        """Flush and close the current segment."""
        with self._sync_lock:
            if self._fd >= 0:
                if self.fsync:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
