"""The daemon's state folder: window snapshots, the append log after them, and recovery.

Layout of ``state_dir``::

    LOCK                      held (flock) while a daemon uses the folder
    log-00000007.wal          append log segments (see :mod:`workbench.service.journal`)
    snapshot-00000007.npz     the windows as plain numpy arrays (np.savez, loaded without pickle)
    snapshot.json             the commit point: which snapshot, which segment to replay from,
                              contract, bundle identity, server names, counters

A snapshot is taken at the start of a fresh segment: everything before that segment is in it.
Files are written to a temporary name, fsynced and renamed, and ``snapshot.json`` is renamed
last, so a crash at any moment leaves either the old or the new snapshot in force, with every
segment it needs still present. Recovery loads the snapshot, replays the later segments, cuts a
torn tail off the newest one and starts a new segment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from workbench import contract as c
from workbench.errors import StateError
from workbench.inference.window import WindowStore
from workbench.model.bundle import Bundle
from workbench.service.journal import Journal, Segment, fsync_dir, segment_path, segments

SNAPSHOT_META = "snapshot.json"
STATE_FORMAT = 1
log = logging.getLogger(__name__)


def bundle_identity(bundle: Bundle) -> dict[str, Any]:
    """Return what identifies a bundle's windows: weights digest, targets and window length."""
    digest = hashlib.sha256()
    if bundle.path is not None and (bundle.path / "model.safetensors").is_file():
        with open(bundle.path / "model.safetensors", "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    else:  # an in-memory bundle: its description stands in for the weights
        digest.update(json.dumps([bundle.spec.to_json(), bundle.hparams], sort_keys=True, default=str).encode())
    return {
        "name": bundle.path.name if bundle.path is not None else None,
        "sha256": digest.hexdigest(),
        "targets": list(bundle.targets),
        "max_encoder_length": bundle.spec.max_encoder_length,
    }


def _identity_differences(stored: dict[str, Any], running: dict[str, Any]) -> list[str]:
    keys = ("sha256", "targets", "max_encoder_length")
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
        truncated_bytes: Bytes of a torn final entry that were cut.
    """

    store: WindowStore
    tick_count: int = 0
    records: int = 0
    snapshot_segment: int | None = None
    replayed_batches: int = 0
    truncated_bytes: int = 0


class StateDir:
    """The state folder of one daemon: locked while in use, recovered on start, snapshotted on a schedule.

    Args:
        directory: The folder (created when missing).
        identity: :func:`bundle_identity` of the running bundle.
        fsync: Whether writes are fsynced.

    Raises:
        StateError: when another process holds the folder.
    """

    def __init__(self, directory: Path, identity: dict[str, Any], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.fsync = fsync
        self._lock_file = _lock(self.directory / "LOCK")
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

        Args:
            empty: Makes an empty store (used when there is no snapshot).

        Raises:
            StateError: for a snapshot or segment of another contract or bundle, or damage
                anywhere but at the end of the newest segment.
        """
        out = self._load_snapshot(empty)
        numbers = [n for n in segments(self.directory) if out.snapshot_segment is None or n >= out.snapshot_segment]
        for k, number in enumerate(numbers):
            segment = Segment(segment_path(self.directory, number))
            self._check(str(segment.path), segment.header)
            for frame in segment.frames():
                out.store.ingest(frame)
                out.replayed_batches += 1
                out.tick_count += 1
                out.records += frame.height
            if segment.torn_bytes:
                where = f"{segment.path}: damaged entry at byte {segment.valid_bytes}"
                if k != len(numbers) - 1:
                    raise StateError(f"{where}, before later segments")
                log.warning("%s; cutting %d torn bytes (never acknowledged)", where, segment.torn_bytes)
                os.truncate(segment.path, segment.valid_bytes)
                out.truncated_bytes = segment.torn_bytes
        first = max([*segments(self.directory), 0]) + 1
        return out, Journal(self.directory, self.header, fsync=self.fsync, first_segment=first)

    def _load_snapshot(self, empty: Callable[[], WindowStore]) -> Recovered:
        meta_path = self.directory / SNAPSHOT_META
        if not meta_path.is_file():
            return Recovered(store=empty())
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StateError(f"{meta_path}: unreadable snapshot description: {exc}") from exc
        self._check(str(meta_path), meta)
        file = self.directory / str(meta.get("file"))
        try:
            with np.load(file, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            store = WindowStore.from_state(arrays)
        except (OSError, ValueError, KeyError) as exc:
            raise StateError(f"{file}: unreadable window snapshot: {exc}") from exc
        return Recovered(store, int(meta["tick_count"]), int(meta["records"]), int(meta["segment"]))

    def write_snapshot(self, segment: int, state: dict[str, np.ndarray], counters: dict[str, int]) -> Path:
        """Write the windows as of the start of ``segment``, then make it the snapshot in force.

        Args:
            segment: The first segment *not* covered by the snapshot.
            state: :meth:`WindowStore.state` taken when ``segment`` was started.
            counters: ``tick_count`` and ``records`` at that moment.
        """
        file = self.directory / f"snapshot-{segment:08d}.npz"
        _atomic_write(file, lambda fh: np.savez(fh, allow_pickle=False, **state), fsync=self.fsync)
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
        _atomic_write(self.directory / SNAPSHOT_META, lambda fh: fh.write(text), fsync=self.fsync)
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


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any], *, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def _lock(path: Path) -> IO[bytes]:
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
