"""The daemon's state folder: window snapshots, the append log after them, and recovery.

Layout of ``state_dir``::

    LOCK                      held (flock) while a daemon uses the folder
    log-00000007.wal          append log segments (see :mod:`workbench.service.journal`)
    snapshot-00000007.npz     the windows as plain numpy arrays (np.savez, loaded without pickle)
    snapshot.json             the commit point: which snapshot, which segment to replay from,
                              contract, bundle identity, server names, counters
    damaged/                  files set aside by recovery or `workbench state repair`, and
                              ledger.jsonl saying what each held and what was lost

A snapshot is taken at the start of a fresh segment: everything before that segment is in it.
Files are written to a temporary name, fsynced and renamed, and ``snapshot.json`` is renamed
last, so a crash at any moment leaves either the old or the new snapshot in force, with every
segment it needs still present. Recovery loads the snapshot, replays the later segments (going
on past a damaged entry, counted), and starts a new segment; it never cuts or deletes a file:
what it cannot use goes to ``damaged/`` (:mod:`workbench.service.state_aside`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from workbench import contract as c
from workbench.errors import StateError
from workbench.inference.window import WindowStore
from workbench.service.journal import Journal, Segment, SegmentHeaderError, fsync_dir, segment_path, segments
from workbench.service.state_aside import REPAIR_HINT, aside_segments, keep_copy, set_aside, unaccounted_before

SNAPSHOT_META = "snapshot.json"
STATE_FORMAT = 2  # 2: windows keep their servers in arrival order (LRU) with arrival ticks
log = logging.getLogger(__name__)


def _identity_differences(stored: dict[str, Any], running: dict[str, Any]) -> list[str]:
    # What shapes the windows: a bundle with other weights but the same targets and window
    # length (a hot reload, a fine-tuned model) reads the same state; its digest is only recorded.
    keys = ("targets", "max_encoder_length")
    return [f"{k}: stored {stored.get(k)!r} != running {running.get(k)!r}" for k in keys if stored.get(k) != running[k]]


@dataclass
class Recovered:
    """What :meth:`StateDir.recover` rebuilt.

    Attributes:
        store: The windows, as they were when the last acknowledged batch was written.
        tick_count: Batches accepted over the life of the state folder.
        records: Records accepted over the life of the state folder.
        snapshot_segment: Segment the snapshot covered up to (``None``: no snapshot).
        replayed_batches: Batches replayed from the log.
        truncated_bytes: Bytes of torn final entries (never acknowledged) that were skipped.
        damage: Every unreadable span of the log: segment, offset, length, kind, records.
        set_aside: Files moved to ``damaged/`` on this start (they held nothing acknowledged).
    """

    store: WindowStore
    tick_count: int = 0
    records: int = 0
    snapshot_segment: int | None = None
    replayed_batches: int = 0
    truncated_bytes: int = 0
    damage: list[dict[str, Any]] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)

    @property
    def lost_entries(self) -> int:
        """Acknowledged batches that could not be read back (checksum failures)."""
        return sum(1 for d in self.damage if d["kind"] == "corrupt")

    def to_json(self) -> dict[str, Any]:
        """What the start recovered, for ``/status``."""
        return {
            "snapshot_segment": self.snapshot_segment,
            "replayed_batches": self.replayed_batches,
            "torn_bytes_skipped": self.truncated_bytes,
            "lost_batches": self.lost_entries,
            "lost_records_at_least": sum(d["records"] or 0 for d in self.damage if d["kind"] == "corrupt"),
            "damage": self.damage[:20],
            "set_aside": self.set_aside,
        }


class StateDir:
    """The state folder of one daemon: locked while in use, recovered on start, snapshotted on a schedule.

    Args:
        directory: The folder (created when missing).
        identity: :meth:`workbench.manifest.BundleInfo.identity` of the running bundle.
        fsync: Whether writes are fsynced.

    Raises:
        StateError: when another process holds the folder.
    """

    def __init__(self, directory: Path, identity: dict[str, Any], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.fsync = fsync
        self._lock_file = lock_folder(self.directory / "LOCK")
        self.header = {
            "format": STATE_FORMAT,
            "contract_version": c.CONTRACT_VERSION,
            "contract": c.contract_json(),
            "bundle": identity,
        }

    def _check(self, what: str, stored: dict[str, Any]) -> None:
        diffs = c.contract_differences(stored.get("contract", {}))
        diffs += [f"bundle {d}" for d in _identity_differences(stored.get("bundle", {}), self.identity)]
        if stored.get("format") != STATE_FORMAT:
            diffs.append(f"format: stored {stored.get('format')!r} != running {STATE_FORMAT}")
        if diffs:
            raise StateError(
                f"{what} was written under another contract or bundle; use another --state-dir or remove "
                f"{self.directory} to start afresh:\n  " + "\n  ".join(diffs)
            )

    def recover(self, empty: Callable[[], WindowStore]) -> tuple[Recovered, Journal]:
        """Rebuild the windows from the snapshot and the log, and open a new log segment.

        A segment without a valid header that holds no entries (a crash between creating it
        and writing its header) is moved to ``damaged/``; an entry that fails its checksum is
        skipped and counted, the segment copied to ``damaged/`` as evidence, and reading
        goes on with the next valid entry; no file is ever cut or deleted here.

        Args:
            empty: Makes an empty store (used when there is no snapshot).

        Raises:
            StateError: for a snapshot or segment of another contract or bundle, a damaged
                snapshot, a header-less segment that holds entries, or records that only a
                missing ``snapshot.json`` could reach (each names ``workbench state repair``).
        """
        out = self._load_snapshot(empty)
        present = segments(self.directory)
        numbers = [n for n in present if out.snapshot_segment is None or n >= out.snapshot_segment]
        self._check_log_start(out, numbers)
        for number in numbers:
            path = segment_path(self.directory, number)
            try:
                segment = Segment(path)
            except SegmentHeaderError as exc:
                if exc.holds_data:
                    raise StateError(f"{exc}; {REPAIR_HINT.format(dir=self.directory)}") from exc
                out.set_aside.append(set_aside(self.directory, path, "no valid header and no entries"))
                log.warning("%s: no valid header and no entries (a crash while creating it); set aside", path)
                continue
            self._check(str(path), segment.header)
            for frame in segment.frames():
                out.store.ingest(frame)
                out.replayed_batches += 1
                out.tick_count += 1
                out.records += frame.height
            self._note_damage(segment, out)
        first = max([*present, *aside_segments(self.directory), 0]) + 1
        return out, Journal(self.directory, self.header, fsync=self.fsync, first_segment=first)

    def _note_damage(self, segment: Segment, out: Recovered) -> None:
        out.damage += [{"segment": segment.path.name, **dataclasses.asdict(d)} for d in segment.damage]
        out.truncated_bytes += segment.torn_bytes
        if segment.torn_bytes:
            log.warning("%s: %d torn bytes at the end (a write cut short, never acknowledged) skipped",
                        segment.path, segment.torn_bytes)  # fmt: skip
        if segment.corrupt:
            copy = keep_copy(self.directory, segment.path, "entries failing their checksum")
            for d in segment.corrupt:
                held = "unknown" if d.records is None else str(d.records)
                log.error(
                    "%s: %d bytes at byte %d fail their checksum: one acknowledged batch (%s records) is LOST; "
                    "reading went on after it; the segment is copied to %s",
                    segment.path, d.length, d.offset, held, copy,
                )  # fmt: skip

    def _check_log_start(self, out: Recovered, numbers: list[int]) -> None:
        """Refuse a log that starts after segment 1 with no snapshot in force to hold what came before."""
        if out.snapshot_segment is not None or not numbers or numbers[0] == 1:
            return
        if unaccounted_before(self.directory, numbers[0]):
            snapshots = sorted(p.name for p in self.directory.glob("snapshot-*.npz"))
            where = f" ({', '.join(snapshots)} is not in force)" if snapshots else ""
            raise StateError(
                f"{self.directory}: no {SNAPSHOT_META}, yet the log starts at segment {numbers[0]}: the records "
                f"before it are only in a snapshot{where}; {REPAIR_HINT.format(dir=self.directory)}"
            )

    def _load_snapshot(self, empty: Callable[[], WindowStore]) -> Recovered:
        meta_path = self.directory / SNAPSHOT_META
        if not meta_path.is_file():
            return Recovered(store=empty())
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"{meta_path}: unreadable snapshot description: {exc}; "
                             f"{REPAIR_HINT.format(dir=self.directory)}") from exc  # fmt: skip
        self._check(str(meta_path), meta)
        file = self.directory / str(meta.get("file"))
        try:
            store = load_window_snapshot(file)
            return Recovered(store, int(meta["tick_count"]), int(meta["records"]), int(meta["segment"]))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 (zip, zlib, numpy and shape errors all mean: damaged)
            raise StateError(
                f"{file}: damaged window snapshot ({type(exc).__name__}: {exc}); "
                f"{REPAIR_HINT.format(dir=self.directory)}"
            ) from exc

    def write_snapshot(self, segment: int, state: dict[str, np.ndarray], counters: dict[str, int]) -> Path:
        """Write the windows as of the start of ``segment``, then make it the snapshot in force.

        Args:
            segment: The first segment *not* covered by the snapshot.
            state: :meth:`WindowStore.state` taken when ``segment`` was started.
            counters: ``tick_count`` and ``records`` at that moment.
        """
        file = self.directory / f"snapshot-{segment:08d}.npz"
        atomic_write(file, lambda fh: np.savez(fh, allow_pickle=False, **state), fsync=self.fsync)
        names = [str(n) for n in state["names"] if n]
        meta = {
            **self.header,
            "file": file.name,
            "segment": segment,
            "offset": 0,
            "tick_count": int(counters["tick_count"]),
            "records": int(counters["records"]),
            "servers": names,
            "created": datetime.now(UTC).isoformat(),
        }
        text = json.dumps(meta, indent=1).encode()
        atomic_write(self.directory / SNAPSHOT_META, lambda fh: fh.write(text), fsync=self.fsync)
        self._cleanup(segment, file.name)
        return file

    def _cleanup(self, segment: int, keep: str) -> None:
        """Remove the segments and snapshots the snapshot in force has made unnecessary."""
        for number in segments(self.directory):
            if number < segment:
                segment_path(self.directory, number).unlink(missing_ok=True)
        for old in self.directory.glob("snapshot-*.npz"):
            if old.name != keep:
                old.unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.directory)

    def close(self) -> None:
        """Release the folder."""
        self._lock_file.close()


def load_window_snapshot(file: Path) -> WindowStore:
    """Read a window snapshot (plain numpy arrays, no pickle); any damage raises."""
    with np.load(file, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return WindowStore.from_state(arrays)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], *, fsync: bool) -> None:
    """Write ``path`` through a fsynced temporary file and a rename (no half-written file is ever left)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written copy (a full disk) must not linger
        raise
    if fsync:
        fsync_dir(path.parent)


def lock_folder(path: Path) -> IO[bytes]:
    """Hold an exclusive advisory lock on ``path`` (the state folder's LOCK) until the returned file is closed."""
    fh = open(path, "ab")  # noqa: SIM115 (held open for the daemon's lifetime)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        raise StateError(f"{path.parent} is in use by another daemon ({exc})") from exc
    return fh
