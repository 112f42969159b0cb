"""The write path of ``POST /feed/data``: parse, validate, log, then add to the windows.

Nothing on this path waits for the model. A batch is checked record by record against the
contract (:func:`workbench.records.validate_records`), plus checks for timestamps from the
future and absurd magnitudes; the valid records are written to the append log and added to the
windows under one short lock (so the log order is the ingest order), and the log is fsynced outside the lock
before the daemon answers. Invalid records are never stored; the response names each one.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from workbench import contract as c
from workbench.errors import Issue, StateError
from workbench.inference.window import IngestReport, WindowStore
from workbench.records import validate_records
from workbench.service.common import BodyError
from workbench.service.journal import Journal

MAX_ISSUES_SHOWN = 1000
DEFAULT_MAX_FUTURE_SECONDS = 300.0  # clock skew allowed to a client; more could move the fleet's "now"
ARRIVAL_SAMPLE_SECONDS = 5.0  # resolution of idle eviction
MAX_UNBOUNDED = 1e9  # a metric without an upper bound (MB/s, ms) is refused beyond this as absurd


def parse_body(body: bytes, max_records: int) -> list[Any]:
    """Return the ``records`` list of a ``/feed/data`` body.

    Raises:
        BodyError: 400 for malformed JSON, 422 for a body without a ``records`` list, 413 for
            more than ``max_records`` records.
    """
    try:
        doc = orjson.loads(body)  # strict and fast; anything it refuses gets the lenient parser below
    except orjson.JSONDecodeError:
        try:  # NaN and Infinity literals parse here and are then refused record by record
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, 4301-digit ints, deep nesting
            raise BodyError(400, f"malformed JSON body: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        reason = 'must be a JSON object {"records": [...]}'
        raise BodyError(422, f"the body {reason}", [_issue("<body>", reason)])
    records = doc.get("records")
    if not isinstance(records, list):
        reason = "required field is missing" if "records" not in doc else "must be a list of record objects"
        raise BodyError(422, f"records: {reason}", [_issue("records", reason)])
    if len(records) > max_records:
        raise BodyError(413, f"{len(records)} records in one body; at most {max_records} are accepted")
    return records


def _issue(field: str, reason: str) -> Issue:
    return Issue(None, field, None, reason)


@dataclass(frozen=True)
class FleetStats:
    """Window figures refreshed by the background predictor (reading them costs the feed nothing).

    Attributes:
        servers: Servers held.
        ready: Servers with enough history to be forecast.
        window_size: Server-steps of history held over the fleet.
        updated: UTC time of the refresh.
    """

    servers: int = 0
    ready: int = 0
    window_size: int = 0
    updated: str | None = None

    @classmethod
    def of(cls, histories: dict[str, int], needed: int) -> FleetStats:
        """Compute the figures from per-server history lengths."""
        ready = sum(1 for n in histories.values() if n >= needed)
        return cls(len(histories), ready, sum(histories.values()), datetime.now(UTC).isoformat())


@dataclass
class Counters:
    """Monotonic ingest counters (exported on ``/metrics``)."""

    batches: int = 0
    records_accepted: int = 0
    records_rejected: int = 0
    too_old: int = 0
    evicted_idle: int = 0
    evicted_capacity: int = 0
    bodies_refused: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedOutcome:
    """The answer to one feed: HTTP status and the JSON body."""

    status: int
    body: dict[str, Any]


class Ingestor:
    """Owns the live windows and the log; every write to either goes through :meth:`feed`.

    Args:
        store: The live windows (recovered or empty).
        journal: The append log (``None``: nothing persisted).
        tick_count: Batches accepted before this process started.
        records: Records accepted before this process started.
        max_future_seconds: Refuse timestamps further ahead of the clock (``None``: no limit).
        clock: UTC epoch seconds (injectable for tests).
        on_accepted: Called with the rows stored by each feed, once durable (the history archive).
    """

    def __init__(
        self,
        store: WindowStore,
        journal: Journal | None,
        *,
        tick_count: int = 0,
        records: int = 0,
        max_future_seconds: float | None = DEFAULT_MAX_FUTURE_SECONDS,
        clock: Callable[[], float] = time.time,
        on_accepted: Callable[[pl.DataFrame], None] | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self.lock = threading.Lock()
        self.tick_count = tick_count
        self.records = records
        self.generation = 0  # batches ingested by this process: the predictor watches it
        self.newest_step = int(store.state()["last"].max(initial=-1))
        self.counters = Counters()
        self.stats = FleetStats()
        self.max_future_seconds = max_future_seconds
        self.write_error: str | None = None  # the last failed log write, until one succeeds
        self._arrivals: deque[tuple[float, int]] = deque()  # (wall clock, store tick), oldest first
        self._clock = clock
        self._on_accepted = on_accepted

    def feed(self, records: Sequence[Any]) -> FeedOutcome:
        """Validate ``records``, store the valid ones durably, and say what happened to each."""
        batch = validate_records(records)
        frame, kept, rejected = self._service_limits(batch.frame, batch.accepted, batch.rejected)
        too_old = added = 0
        if frame.height:
            with self.lock:
                seq = self._append(frame)
                report = self.store.ingest(frame)
                dropped = self._dropped(frame, kept, report)
                self._note_arrival()
                self.tick_count += 1
                self.records += frame.height
                self.generation += 1
                step = int(frame[c.TIMESTAMP].max().timestamp()) // c.STEP_SECONDS  # type: ignore[union-attr]
                self.newest_step = max(self.newest_step, step)
                servers = self.store.server_count
            self._sync(seq)
            too_old = report.too_old
            added = frame.height - len(dropped)
            if self._on_accepted is not None and added:  # the history archive: stored rows only, once durable
                self._on_accepted(_stored(frame, kept, dropped))
            self.counters.evicted_capacity += len(report.evicted)
            if dropped:
                rejected = sorted([*rejected, *dropped], key=lambda i: (i.index or 0, i.field))
        else:
            servers = self.stats.servers
        bad = len({i.index for i in rejected})
        self._count(added, bad, too_old)
        stats = self.stats
        body = {
            "status": "success" if not rejected else ("partial" if added else "rejected"),
            "records_added": added,
            "records_rejected": bad,
            "rejected": [i.to_dict() for i in rejected[:MAX_ISSUES_SHOWN]],
            "ignored_fields": batch.ignored_fields,
            "too_old": too_old,
            "window_size": stats.window_size,
            "tick": self.tick_count,
            "servers": servers,
            "warming_up": max(servers - stats.ready, 0),
        }
        if len(rejected) > MAX_ISSUES_SHOWN:
            body["rejected_truncated"] = len(rejected) - MAX_ISSUES_SHOWN
        return FeedOutcome(200 if not rejected else 422, body)

    def _append(self, frame: pl.DataFrame) -> int:
        """Log a batch (under the lock); a failure is remembered for ``/health`` until a write succeeds."""
        if self.journal is None:
            return 0
        try:
            seq = self.journal.append(frame)
        except StateError as exc:
            self.write_error = str(exc)
            raise
        self.write_error = None
        return seq

    def _sync(self, seq: int) -> None:
        if self.journal is None:
            return
        try:
            self.journal.sync(seq)
        except OSError as exc:  # the batch is in the windows but perhaps not on disk: not acknowledged
            self.write_error = f"cannot make the append log durable: {exc}"
            raise StateError(f"{self.write_error}; the batch is not acknowledged, send it again") from exc

    def _dropped(self, frame: pl.DataFrame, kept: list[int], report: IngestReport) -> list[Issue]:
        """Issues for the rows the windows did not keep: older than their server's window, or no room.

        Read under the lock right after :meth:`WindowStore.ingest`: a row is too old when its
        step is a whole window before its server's newest step, as the store decided.
        """
        if not report.too_old and not report.refused:
            return []
        names = frame[c.SERVER].to_list()
        last = self.store.last_steps(names)
        steps = frame[c.TIMESTAMP].dt.epoch("s").to_numpy() // c.STEP_SECONDS
        refused = set(report.refused)
        out = []
        for row, name in enumerate(names):
            if name in refused:
                reason = f"not stored: the daemon holds at most {self.store.max_servers} servers, all sending now"
                out.append(Issue(kept[row], c.SERVER, name, reason))
            elif steps[row] <= last[row] - self.store.capacity:
                newest = c.step_time(int(last[row])).isoformat()
                reason = f"not stored: more than {self.store.capacity} steps before this server's newest ({newest})"
                out.append(Issue(kept[row], c.TIMESTAMP, frame[c.TIMESTAMP][row].isoformat(), reason))
        return out

    def _note_arrival(self) -> None:
        """Remember (at most every few seconds) which store tick the wall clock had reached."""
        now = self._clock()
        if not self._arrivals or now - self._arrivals[-1][0] >= ARRIVAL_SAMPLE_SECONDS:
            self._arrivals.append((now, self.store.tick))
        else:
            self._arrivals[-1] = (self._arrivals[-1][0], self.store.tick)

    def evict_idle(self, idle_seconds: float) -> list[str]:
        """Evict the servers that have sent nothing for ``idle_seconds`` of wall-clock time.

        Idleness is measured against arrivals, not data time: a replay of last month's data is
        as live as today's. Costs O(servers evicted) under the ingest lock.
        """
        cutoff = self._clock() - idle_seconds
        tick = None
        with self.lock:
            while self._arrivals and self._arrivals[0][0] < cutoff:
                tick = self._arrivals.popleft()[1]
            evicted = self.store.evict_idle(tick + 1) if tick is not None else []
            if evicted:
                self.generation += 1
        self.counters.evicted_idle += len(evicted)
        return evicted

    def _service_limits(
        self, frame: pl.DataFrame, accepted: list[int], rejected: list[Issue]
    ) -> tuple[pl.DataFrame, list[int], list[Issue]]:
        """Refuse what the contract allows but a live daemon must not store.

        A timestamp far in the future would make every other server look idle (and be evicted);
        a value past :data:`MAX_UNBOUNDED` of a metric without an upper bound would overflow
        the windows' sums to infinity.
        """
        if frame.height == 0:
            return frame, accepted, rejected
        checks: list[tuple[str, pl.Expr, str]] = [
            (m.name, pl.col(m.name) > MAX_UNBOUNDED, f"implausibly large: at most {MAX_UNBOUNDED:g} {m.unit}")
            for m in c.METRICS
            if m.high is None
        ]
        if self.max_future_seconds is not None:
            limit = datetime.fromtimestamp(self._clock() + self.max_future_seconds, UTC)
            ahead = f"{self.max_future_seconds:g} s"
            reason = f"lies more than {ahead} ahead of the daemon's clock (UTC {limit:%Y-%m-%d %H:%M})"
            checks.append((c.TIMESTAMP, pl.col(c.TIMESTAMP) > limit, reason))
        flags = frame.select(*(expr.fill_null(False).alias(str(k)) for k, (_, expr, _) in enumerate(checks)))
        if not flags.select(pl.any_horizontal(pl.all()).any()).item():
            return frame, accepted, rejected
        issues = []
        for k, (column, _, reason) in enumerate(checks):
            rows = flags[str(k)].arg_true().to_list()
            values = frame[column].gather(rows).to_list()
            issues += [Issue(accepted[i], column, v, reason) for i, v in zip(rows, values, strict=True)]
        bad = flags.select(pl.any_horizontal(pl.all())).to_series()
        kept = [accepted[i] for i in (~bad).arg_true().to_list()]
        return frame.filter(~bad), kept, sorted([*rejected, *issues], key=lambda i: (i.index or 0, i.field))

    def _count(self, accepted: int, rejected: int, too_old: int) -> None:
        counters = self.counters
        counters.batches += 1 if accepted else 0
        counters.records_accepted += accepted
        counters.records_rejected += rejected
        counters.too_old += too_old

    def refuse(self, status: int) -> None:
        """Count a body refused before validation (malformed, too large, unauthorised)."""
        self.counters.bodies_refused[status] = self.counters.bodies_refused.get(status, 0) + 1

    def copy_state(self) -> tuple[dict[str, Any], int]:
        """Return a copy of the windows' state and the generation it reflects (a short lock)."""
        with self.lock:
            return self.store.state(), self.generation

    def start_snapshot(self) -> tuple[int, dict[str, Any], dict[str, int]] | None:
        """Start a new log segment and copy the windows as of its start (a short lock).

        Returns:
            ``(segment, state, counters)`` for :meth:`StateDir.write_snapshot`, or ``None``
            when nothing is persisted.
        """
        if self.journal is None:
            return None
        with self.lock:
            segment = self.journal.rotate()
            return segment, self.store.state(), {"tick_count": self.tick_count, "records": self.records}


def _stored(frame: pl.DataFrame, kept: list[int], dropped: list[Issue]) -> pl.DataFrame:
    """Return the rows of ``frame`` the windows kept (``kept[row]`` is each row's record index)."""
    if not dropped:
        return frame
    gone = {issue.index for issue in dropped}
    return frame.filter(pl.Series([index not in gone for index in kept], dtype=pl.Boolean))
