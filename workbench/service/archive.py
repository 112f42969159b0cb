"""The history archive: accepted metrics, issued forecasts and alert transitions, kept as parquet.

Each table (:data:`~workbench.service.archive_rows.KINDS`) is a hive-partitioned folder,
``DIR/<kind>/date=YYYY-MM-DD/part-<ns>-<uuid>.parquet``, partitioned by the rows' data time.
Rows are buffered in memory and written every ``flush_seconds`` (sooner past ``flush_rows``, and
on close) as NEW small files: written under a hidden temporary name, fsynced, then renamed, so a
reader never sees half a file and no file is ever rewritten. Retention deletes whole date
partitions. Readers see the buffered rows too, so a row is queryable as soon as it is added.

A write that fails (a full disk) never reaches the feed: the rows stay buffered, up to
``max_rows`` (the oldest are dropped past it, and counted), and the error is reported in
``/status`` and ``/health`` until a flush succeeds.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from workbench import contract as c
from workbench.errors import ConfigError, StateError
from workbench.service.archive_rows import (
    KINDS,
    SCHEMAS,
    active_alerts,
    alert_transitions,
    conform,
    forecast_rows,
    last_origins,
    new_origins,
)
from workbench.service.horizon_points import HorizonPoints

PARTITION_PREFIX = "date="
EXPIRED_PREFIX = ".expired-"
log = logging.getLogger(__name__)

_Result = tuple[HorizonPoints | None, list[dict[str, Any]], datetime, datetime]
_MAX_PENDING = 64  # results waiting to become rows (the flush thread turns them into rows each second)


class Archive:
    """Appends rows to the history tables and reads them back.

    Args:
        directory: Folder of the three tables (created when missing).
        retention_days: Keep at least this many days before the newest data (or today, when
            the data runs ahead of the clock); older date partitions are deleted whole.
        flush_seconds: Seconds between writes of the buffered rows.
        flush_rows: Write sooner once this many rows are buffered.
        max_rows: Most rows held in memory while writes fail; the oldest are dropped past it.
        fsync: ``os.fsync`` each file and its folder before it counts as written.
        clock: UTC epoch seconds (injectable for tests).

    Raises:
        ConfigError: when a setting is out of range.
        StateError: when the folder cannot be created.
    """

    def __init__(
        self,
        directory: Path,
        *,
        retention_days: int = 30,
        flush_seconds: float = 60.0,
        flush_rows: int = 100_000,
        max_rows: int = 2_000_000,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems = [f"{name}={value!r} must be > 0" for name, value in
                    [("retention_days", retention_days), ("flush_seconds", flush_seconds), ("flush_rows", flush_rows),
                     ("max_rows", max_rows)] if not value > 0]  # fmt: skip
        if problems:
            raise ConfigError("history archive: " + "; ".join(problems))
        self.directory = Path(directory)
        try:
            for kind in KINDS:
                (self.directory / kind).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the history folder {self.directory}: {exc}") from exc
        self.retention_days, self.flush_seconds, self.flush_rows = retention_days, flush_seconds, flush_rows
        self.max_rows, self.fsync, self._clock = max_rows, fsync, clock
        self._lock = threading.Lock()  # buffers, in-flight parts, pending results, counters
        self._publish = threading.Lock()  # a file's rename or a partition's deletion vs a reader's listing
        self._convert = threading.Lock()  # results become rows one at a time, in order
        self._flushing = threading.Lock()
        self._buffers: dict[str, list[pl.DataFrame]] = {kind: [] for kind in KINDS}
        self._held = 0  # rows in the buffers
        self._inflight: dict[str, list[pl.DataFrame]] = {kind: [] for kind in KINDS}
        self._pending: deque[_Result] = deque()
        self._alerts: list[dict[str, Any]] = []
        self._origins: dict[str, int] = {}  # per server, the newest forecast origin archived
        self._newest = max((d for kind in KINDS for d in self._dates(kind)), default=None)
        self.rows_written = {kind: 0 for kind in KINDS}
        self.rows_dropped = self.rows_expired = self.files_written = self.flushes = self.flush_failures = 0
        self.partitions_deleted = 0
        self.error: str | None = None
        self.last_flush: str | None = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ writing

    def add(self, kind: str, frame: pl.DataFrame) -> None:
        """Buffer rows of table ``kind`` (never raises for the disk; the oldest go past ``max_rows``)."""
        if frame.height == 0:
            return
        frame = conform(kind, frame)
        with self._lock:
            self._buffers[kind].append(frame)
            self._held += frame.height
            self._trim()
            due = self._held >= self.flush_rows
        if due:
            self._wake.set()

    def add_metrics(self, frame: pl.DataFrame) -> None:
        """Buffer accepted records (contract columns)."""
        self.add("metrics", frame)

    def add_result(self, points: HorizonPoints | None, alerts: Sequence[dict[str, Any]], data_time: str | None) -> None:
        """Queue a published result: its forecast points and its alert list (turned into rows off the caller).

        Cheap enough for the event loop; the rows are built by the flush thread, or by the next reader.

        Args:
            points: The forecast at a few horizons (``None``: no forecast in the result).
            alerts: The result's alert dicts.
            data_time: The result's ``metadata.data_time`` (``None``: no data yet; nothing is queued).
        """
        if data_time is None:
            return
        at = datetime.fromisoformat(data_time).astimezone(UTC)
        with self._lock:
            self._pending.append((points, list(alerts), at, datetime.fromtimestamp(self._clock(), UTC)))
            while len(self._pending) > _MAX_PENDING:  # only when the flush thread is stuck
                dropped = self._pending.popleft()[0]
                self.rows_dropped += dropped.values.size // len(dropped.levels) if dropped is not None else 0
        self._wake.set()

    def _drain(self) -> None:
        """Turn the queued results into buffered rows, in publication order."""
        with self._convert:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    points, alerts, at, when = self._pending.popleft()
                if points is not None and points.servers:
                    self.add("forecasts", forecast_rows(new_origins(points, self._origins)))
                self.add("alerts", alert_transitions(self._alerts, alerts, at, when))
                self._alerts = alerts

    def _trim(self) -> None:
        """Drop the oldest buffered frames past ``max_rows`` (under the lock)."""
        while self._held > self.max_rows:
            kind = max(KINDS, key=lambda k: sum(f.height for f in self._buffers[k]))
            gone = self._buffers[kind].pop(0)
            self._held -= gone.height
            self.rows_dropped += gone.height

    def flush(self) -> int:
        """Write the buffered rows as new files, then apply retention; return the rows written.

        A failure keeps the rows not yet written buffered and is remembered in :attr:`error`
        until a flush succeeds; it is not raised.
        """
        self._drain()
        with self._flushing:
            with self._lock:  # in flight: readers still see these rows until their file is renamed in
                for kind in KINDS:
                    self._inflight[kind], self._buffers[kind] = self._buffers[kind], []
                self._held = 0
            written = 0
            try:
                for kind in KINDS:
                    written += self._flush_kind(kind)
                self._expire()
            except (OSError, pl.exceptions.PolarsError) as exc:
                with self._lock:
                    self.flush_failures += 1
                    self.error = f"history archive cannot write to {self.directory}: {exc}"
                    for kind in KINDS:  # back in front of what arrived meanwhile
                        self._held += sum(f.height for f in self._inflight[kind])
                        self._buffers[kind] = [*self._inflight[kind], *self._buffers[kind]]
                        self._inflight[kind] = []
                    self._trim()
                    buffered = self._held
                log.error("%s; %d rows kept in memory, retrying in %.0f s", self.error, buffered, self.flush_seconds)
            else:
                with self._lock:
                    self.flushes += 1
                    self.error = None
                    self.last_flush = datetime.fromtimestamp(self._clock(), UTC).isoformat()
            return written

    def _flush_kind(self, kind: str) -> int:
        """Write the in-flight rows of ``kind``, one new file per date; rows past retention are counted, not written."""
        with self._lock:
            frames = self._inflight[kind]
        if not frames:
            return 0
        frame = pl.concat(frames).with_columns(pl.col(c.TIMESTAMP).dt.date().alias("date"))
        newest = frame["date"].max()
        assert isinstance(newest, date)
        cutoff = self._cutoff(newest)
        kept = frame.filter(pl.col("date") >= cutoff)
        parts = kept.partition_by("date", maintain_order=True) if kept.height else []
        with self._lock:
            self.rows_expired += frame.height - kept.height
            self._inflight[kind] = [p.drop("date") for p in parts]
        for part in parts:
            self._write(kind, part["date"][0], part.drop("date"))
            with self._lock:
                self.rows_written[kind] += part.height
        return kept.height

    def _write(self, kind: str, day: date, frame: pl.DataFrame) -> None:
        """Write one new file: a hidden temporary name, fsync, rename (readers never see half a file)."""
        folder = self.directory / kind / f"{PARTITION_PREFIX}{day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        temporary = folder / f".{name}.tmp"
        try:
            with open(temporary, "wb") as handle:
                frame.write_parquet(handle, statistics=True)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            with self._publish:  # the file and the in-flight copy are never both visible to a reader
                os.rename(temporary, folder / name)
                with self._lock:
                    self._inflight[kind].pop(0)
                    self.files_written += 1
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_folder(folder)
        self._newest = day if self._newest is None else max(self._newest, day)

    # ------------------------------------------------------------------ retention

    def _cutoff(self, newest: date | None = None) -> date:
        """The oldest date kept: ``retention_days`` before the newest data, or before today if that is earlier."""
        today = datetime.fromtimestamp(self._clock(), UTC).date()
        seen = [d for d in (self._newest, newest) if d is not None]
        reference = min(max(seen), today) if seen else today
        return reference - timedelta(days=self.retention_days)

    def _expire(self) -> list[str]:
        """Delete whole date partitions older than the cutoff; return their paths relative to the folder."""
        cutoff, deleted = self._cutoff(), []
        for kind in KINDS:
            for day in self._dates(kind):
                if day >= cutoff:
                    continue
                folder = self.directory / kind / f"{PARTITION_PREFIX}{day.isoformat()}"
                hidden = folder.with_name(f"{EXPIRED_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}")
                try:
                    with self._publish:
                        os.rename(folder, hidden)  # gone for readers at once; removed below
                except FileNotFoundError:  # another daemon sharing the folder expired it first
                    continue
                deleted.append(f"{kind}/{folder.name}")
            for leftover in (self.directory / kind).glob(f"{EXPIRED_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        with self._lock:
            self.partitions_deleted += len(deleted)
        return deleted

    def _dates(self, kind: str) -> list[date]:
        days = []
        for path in (self.directory / kind).glob(f"{PARTITION_PREFIX}*"):
            try:
                days.append(date.fromisoformat(path.name.removeprefix(PARTITION_PREFIX)))
            except ValueError:
                continue  # not ours: left alone
        return sorted(days)

    # ------------------------------------------------------------------ reading

    def query(
        self,
        kind: str,
        servers: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
    ) -> tuple[pl.DataFrame, bool]:
        """Return the rows of ``kind`` with ``start <= timestamp <= end``, oldest first, and whether cut at ``limit``.

        Only the date partitions the range touches are opened; the buffered rows are included.
        """
        if kind not in KINDS:
            raise ConfigError(f"kind={kind!r}; allowed: {', '.join(KINDS)}")
        self._drain()
        for attempt in (1, 2):
            try:
                frame = self._read(kind, servers, start, end, None if limit is None else limit + 1)
                break
            except FileNotFoundError:  # a partition expired between the listing and the read
                if attempt == 2:
                    raise
        if limit is not None and frame.height > limit:
            return frame.head(limit), True
        return frame, False

    def _read(
        self, kind: str, servers: Sequence[str] | None, start: datetime | None, end: datetime | None, n: int | None
    ) -> pl.DataFrame:
        schema = SCHEMAS[kind]
        with self._publish:
            with self._lock:
                memory = [*self._inflight[kind], *self._buffers[kind]]
            files = self._files(kind, start.date() if start else None, end.date() if end else None)
        lazies = [f.lazy() for f in memory]
        if files:
            scan = pl.scan_parquet(files, hive_partitioning=True, hive_schema={"date": pl.Date()}, schema=schema,
                                   missing_columns="insert", extra_columns="ignore")  # fmt: skip
            lazies.append(scan.select(list(schema)))
        if not lazies:
            return pl.DataFrame(schema=schema)
        lazy = pl.concat(lazies, how="vertical")
        ts = pl.col(c.TIMESTAMP)
        if start is not None:
            lazy = lazy.filter(ts >= start)
        if end is not None:
            lazy = lazy.filter(ts <= end)
        if servers:
            lazy = lazy.filter(pl.col(c.SERVER).is_in(list(servers)))
        order = [k for k in (c.TIMESTAMP, c.SERVER, "metric", "step") if k in schema]
        lazy = lazy.sort(order, maintain_order=True)
        return (lazy.head(n) if n is not None else lazy).collect()

    def _files(self, kind: str, first: date | None, last: date | None) -> list[Path]:
        """The part files of the date partitions in ``[first, last]`` (the date filter, applied to the folders)."""
        days = [d for d in self._dates(kind) if (first is None or d >= first) and (last is None or d <= last)]
        root = self.directory / kind
        return [p for d in days for p in sorted((root / f"{PARTITION_PREFIX}{d.isoformat()}").glob("part-*.parquet"))]

    def newest(self, kind: str) -> datetime | None:
        """Return the newest ``timestamp`` of ``kind`` (``None`` when the table is empty)."""
        self._drain()
        with self._publish:
            with self._lock:
                times = [f[c.TIMESTAMP].max() for f in [*self._inflight[kind], *self._buffers[kind]]]
            days = self._dates(kind)
            files = self._files(kind, days[-1], None) if days else []
        if files:  # the newest date partition holds the newest row: one column of it is read
            scan = pl.scan_parquet(files, schema=SCHEMAS[kind], missing_columns="insert", extra_columns="ignore")
            times.append(scan.select(pl.col(c.TIMESTAMP).max()).collect().item())
        found = [t for t in times if isinstance(t, datetime)]
        return max(found) if found else None

    # ------------------------------------------------------------------ lifecycle and figures

    def start(self) -> None:
        """Resume from what is on disk, then start the flush thread (idempotent); its first flush applies retention."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._resume()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="history-archive", daemon=True)
        self._thread.start()

    def _resume(self) -> None:
        """Pick up where the last process stopped, so a restart repeats no row.

        The newest forecast origin archived per server (a restarted daemon forecasts its last
        step again) and the alerts still active after the last transitions (a restarted tracker
        raises them again) are read back from the tables.
        """
        try:
            days = self._dates("forecasts")
            if days:
                since = datetime.combine(days[-1] - timedelta(days=1), datetime.min.time(), UTC)
                self._origins = last_origins(self._read("forecasts", None, since, None, None))
            self._alerts = active_alerts(self._read("alerts", None, None, None, None))
        except (OSError, pl.exceptions.PolarsError) as exc:  # a damaged file: at worst some rows are repeated
            log.warning("history archive: cannot read back the last forecasts and alerts: %s", exc)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(min(1.0, self.flush_seconds))
            self._wake.clear()
            try:
                self._drain()
                with self._lock:
                    big = self._held >= self.flush_rows and self.error is None
                if big or time.monotonic() >= due:
                    self.flush()
                    due = time.monotonic() + self.flush_seconds
            except Exception:  # the thread must outlive any one bad batch
                log.exception("history archive: unexpected error in the flush thread")

    def close(self) -> None:
        """Stop the thread and write what is buffered (idempotent; a failure is logged, not raised)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None
        self.flush()

    def problem(self) -> str | None:
        """What ``/health`` reports while writes fail (``None``: fine)."""
        with self._lock:
            if self.error is None:
                return None
            return f"{self.error} ({self._held} rows buffered, {self.rows_dropped} dropped)"

    def status(self, private: bool = True) -> dict[str, Any]:
        """Return the ``history`` part of ``GET /status``."""
        with self._lock:
            buffered = {kind: sum(f.height for f in self._buffers[kind]) for kind in KINDS}
            return {
                "enabled": True,
                "directory": str(self.directory) if private else None,
                "retention_days": self.retention_days,
                "buffered_rows": buffered,
                "rows_written": dict(self.rows_written),
                "rows_dropped": self.rows_dropped,
                "rows_expired": self.rows_expired,
                "files_written": self.files_written,
                "flushes": self.flushes,
                "flush_failures": self.flush_failures,
                "partitions_deleted": self.partitions_deleted,
                "last_flush": self.last_flush,
                "error": self.error,
            }


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
