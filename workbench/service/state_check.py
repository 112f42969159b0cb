"""``workbench state check`` and ``workbench state repair``: look at a state folder without a daemon.

:func:`inspect` reads everything a start would read (snapshot description, window snapshot,
every log segment, entry by entry) and says whether a start recovers it, what it would skip and
what it would refuse. :func:`repair` makes a refused folder startable again by setting aside
(into ``damaged/``, never deleting) what cannot be used, rebuilding ``snapshot.json`` from a
snapshot and its segment's header where that loses nothing, and writing into the ledger what
records are given up.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from workbench.errors import StateError
from workbench.service.journal import Segment, SegmentHeaderError, scan_entries, segment_path, segments
from workbench.service.state import SNAPSHOT_META, atomic_write, load_window_snapshot, lock_folder
from workbench.service.state_aside import record, set_aside, unaccounted_before

_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{8})\.npz$")


@dataclass
class SegmentReport:
    """One segment as a start would read it."""

    name: str
    header: str = "ok"  # ok | missing (no data) | damaged (holds data)
    batches: int = 0
    records: int = 0
    damage: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FolderReport:
    """What :func:`inspect` found.

    Attributes:
        directory: The state folder.
        snapshot: ``none``, ``ok``, ``description damaged``, ``snapshot damaged`` or ``description missing``.
        snapshot_detail: The error or the file in force.
        snapshot_segment: First segment the snapshot does not cover.
        segments: The segments a start reads, in order.
        refusals: Why a start would refuse (empty: it starts).
    """

    directory: Path
    snapshot: str = "none"
    snapshot_detail: str = ""
    snapshot_segment: int | None = None
    segments: list[SegmentReport] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    @property
    def starts(self) -> bool:
        """Whether a daemon would start on this folder (with the same bundle and contract)."""
        return not self.refusals

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {**dataclasses.asdict(self), "directory": str(self.directory), "starts": self.starts}

    def lines(self) -> list[str]:
        """The report as lines of text for a terminal."""
        out = [f"state folder {self.directory}", f"  snapshot: {self.snapshot} {self.snapshot_detail}".rstrip()]
        for seg in self.segments:
            line = f"  {seg.name}: header {seg.header}, {seg.batches} batches, {seg.records} records"
            out.append(line)
            for d in seg.damage:
                held = "?" if d["records"] is None else d["records"]
                what = "never acknowledged" if d["kind"] == "torn" else f"acknowledged batch LOST ({held} records)"
                out.append(f"    {d['kind']}: {d['length']} bytes at byte {d['offset']}: {what}")
        if self.starts:
            out.append("verdict: a start recovers this folder")
        else:
            out += ["verdict: a start refuses this folder:", *(f"  - {r}" for r in self.refusals)]
            out.append(f"  `workbench state repair {self.directory}` sets the damage aside (nothing is deleted)")
        return out


def inspect(directory: Path) -> FolderReport:
    """Read a state folder as a start would, without changing anything.

    Raises:
        StateError: when ``directory`` is not a folder.
    """
    if not directory.is_dir():
        raise StateError(f"{directory}: no such state folder")
    report = FolderReport(directory)
    _inspect_snapshot(directory, report)
    numbers = [n for n in segments(directory) if report.snapshot_segment is None or n >= report.snapshot_segment]
    for number in numbers:
        report.segments.append(_inspect_segment(segment_path(directory, number), report))
    readable = [n for n, s in zip(numbers, report.segments, strict=True) if s.header != "missing"]
    if report.snapshot in ("none", "description missing") and readable and readable[0] > 1:
        if unaccounted_before(directory, readable[0]):
            report.refusals.append(
                f"no {SNAPSHOT_META}, yet the log starts at segment {readable[0]}: "
                "what came before is only in a snapshot"
            )
    return report


def _inspect_snapshot(directory: Path, report: FolderReport) -> None:
    meta_path = directory / SNAPSHOT_META
    npz = sorted(directory.glob("snapshot-*.npz"))
    if not meta_path.is_file():
        if npz:
            report.snapshot, report.snapshot_detail = "description missing", f"({npz[-1].name} is not in force)"
        return
    try:
        meta = json.loads(meta_path.read_text())
        file, segment = directory / str(meta["file"]), int(meta["segment"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.snapshot, report.snapshot_detail = "description damaged", f"({exc})"
        report.refusals.append(f"{SNAPSHOT_META} is unreadable: {exc}")
        return
    try:
        store = load_window_snapshot(file)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 (any failure to read it means: damaged)
        report.snapshot, report.snapshot_detail = "snapshot damaged", f"({file.name}: {type(exc).__name__}: {exc})"
        report.refusals.append(f"{file.name} is damaged: {type(exc).__name__}: {exc}")
        report.snapshot_segment = segment
        return
    report.snapshot = "ok"
    report.snapshot_detail = f"({file.name}: {len(store.servers)} servers, log from segment {segment})"
    report.snapshot_segment = segment


def _inspect_segment(path: Path, report: FolderReport) -> SegmentReport:
    out = SegmentReport(path.name)
    try:
        segment = Segment(path)
    except SegmentHeaderError as exc:
        out.header = "damaged" if exc.holds_data else "missing"
        if exc.holds_data:
            report.refusals.append(str(exc))
        return out
    for frame in segment.frames():
        out.batches += 1
        out.records += frame.height
    out.damage = [dataclasses.asdict(d) for d in segment.damage]
    return out


def repair(directory: Path) -> list[str]:
    """Make a refused state folder startable; return what was done, one line each.

    Takes the folder's lock, so it cannot run beside a daemon. Nothing is deleted: files go
    to ``damaged/`` with a ledger line; records given up are counted in the ledger.

    Raises:
        StateError: when the folder is in use or missing.
    """
    if not directory.is_dir():
        raise StateError(f"{directory}: no such state folder")
    lock = lock_folder(directory / "LOCK")
    try:
        done: list[str] = []
        before = inspect(directory)
        done += _repair_segments(directory, before)
        done += _repair_snapshot(directory, inspect(directory))
        after = inspect(directory)
        if after.refusals:  # only the log-start gap can remain: accept it, loudly
            done += _accept_gap(directory, after)
        return done or ["nothing to repair: a start recovers this folder"]
    finally:
        lock.close()


def _repair_segments(directory: Path, report: FolderReport) -> list[str]:
    done = []
    for seg in report.segments:
        if seg.header == "ok":
            continue
        path = directory / seg.name
        lost = _count_entries(path) if seg.header == "damaged" else (0, 0)
        reason = "header damaged" if seg.header == "damaged" else "no valid header and no entries"
        name = set_aside(directory, path, reason, batches_lost=lost[0], records_lost=lost[1])
        done.append(f"moved {seg.name} to damaged/{name}: {reason}; {lost[0]} batches, {lost[1]} records given up")
    return done


def _count_entries(path: Path) -> tuple[int, int]:
    """Batches and records of the valid entries in a segment whose header is damaged."""
    batches = records = 0
    for payload in scan_entries(path.read_bytes()):
        batches += 1
        records += pl.read_ipc_stream(io.BytesIO(payload)).height
    return batches, records


def _repair_snapshot(directory: Path, report: FolderReport) -> list[str]:
    if report.snapshot in ("description damaged", "snapshot damaged"):
        done = []
        for path in [directory / SNAPSHOT_META, *sorted(directory.glob("snapshot-*.npz"))]:
            if path.is_file():
                name = set_aside(directory, path, report.snapshot)
                done.append(f"moved {path.name} to damaged/{name}: {report.snapshot}")
        return done
    if report.snapshot == "description missing":
        return _rebuild_description(directory)
    return []


def _rebuild_description(directory: Path) -> list[str]:
    """Write ``snapshot.json`` again from the newest snapshot and its segment's header (nothing lost but counters)."""
    newest = sorted(directory.glob("snapshot-*.npz"))[-1]
    match = _SNAPSHOT_RE.match(newest.name)
    number = int(match.group(1)) if match else -1
    path = segment_path(directory, number)
    try:
        header = Segment(path).header
        store = load_window_snapshot(newest)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001
        name = set_aside(directory, newest, f"cannot rebuild {SNAPSHOT_META}: {exc}")
        return [f"moved {newest.name} to damaged/{name}: no usable segment header to rebuild {SNAPSHOT_META} ({exc})"]
    meta: dict[str, Any] = {
        **{k: header[k] for k in ("format", "contract_version", "contract", "bundle") if k in header},
        "file": newest.name,
        "segment": number,
        "offset": 0,
        "tick_count": 0,
        "records": 0,
        "servers": store.servers,
        "created": "rebuilt by workbench state repair",
        "counters_reset": True,
    }
    atomic_write(directory / SNAPSHOT_META, lambda fh: fh.write(json.dumps(meta, indent=1).encode()), fsync=True)
    record(directory, "rebuilt", SNAPSHOT_META, f"from {newest.name} and {path.name}'s header; counters restart at 0")
    return [f"rebuilt {SNAPSHOT_META} from {newest.name} and {path.name}'s header (batch and record counters restart)"]


def _accept_gap(directory: Path, report: FolderReport) -> list[str]:
    numbers = segments(directory)
    if not numbers:
        return []
    first, last = 1, numbers[0] - 1
    record(directory, "accepted_gap", f"segments {first}-{last}", "their records are lost", first=first, last=last)
    return [f"accepted the loss of segments {first}-{last} (no snapshot holds them any more); recorded in the ledger"]
