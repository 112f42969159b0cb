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

import io
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
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


class Segment:
    """One segment file read back: its header, then its frames up to the first torn or damaged entry.

    Args:
        path: The segment file.

    Raises:
        StateError: when the file does not start with a valid header.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = path.read_bytes()
        if not self._data.startswith(MAGIC):
            raise StateError(f"{path}: not a workbench log segment (bad magic)")
        header = _payload_at(self._data, len(MAGIC))
        if header is None:
            raise StateError(f"{path}: damaged segment header")
        self.header: dict[str, Any] = json.loads(header)
        self._start = len(MAGIC) + FRAME.size + len(header)
        self.valid_bytes = self._start
        self.torn_bytes = 0

    def frames(self) -> Iterator[pl.DataFrame]:
        """Yield the batches in order; afterwards ``valid_bytes`` and ``torn_bytes`` say where it stopped."""
        data, pos = self._data, self._start
        while pos < len(data):
            payload = _payload_at(data, pos)
            if payload is None:
                break
            yield pl.read_ipc_stream(io.BytesIO(payload))
            pos += FRAME.size + len(payload)
        self.valid_bytes, self.torn_bytes = pos, len(data) - pos


def _payload_at(data: bytes, pos: int) -> bytes | None:
    if pos + FRAME.size > len(data):
        return None
    length, crc = FRAME.unpack_from(data, pos)
    payload = data[pos + FRAME.size : pos + FRAME.size + length]
    if length == 0 or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return payload


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
        self.segment_bytes = 0
        self._fd = self._create(first_segment)

    def _create(self, number: int) -> int:
        path = segment_path(self.directory, number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        head = MAGIC + _entry(json.dumps({**self.header, "segment": number}).encode())
        _write_all(fd, head)
        if self.fsync:
            os.fsync(fd)
            fsync_dir(self.directory)
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
        """Close the current segment and start the next one (call under the ingest lock); return its number."""
        with self._sync_lock:
            if self.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self.segment += 1
            self._fd = self._create(self.segment)
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
