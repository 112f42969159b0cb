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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from workbench import contract as c
from workbench.errors import Issue
from workbench.inference.window import WindowStore
from workbench.records import validate_records
from workbench.service.journal import Journal

MAX_ISSUES_SHOWN = 1000
MAX_UNBOUNDED = 1e9  # a metric without an upper bound (MB/s, ms) is refused beyond this as absurd


class BodyError(ValueError):
    """A request body that cannot be read as a feed: its HTTP status and issues say why."""

    def __init__(self, status: int, message: str, issues: Sequence[Issue] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.issues = list(issues)


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
    """

    def __init__(
        self,
        store: WindowStore,
        journal: Journal | None,
        *,
        tick_count: int = 0,
        records: int = 0,
        max_future_seconds: float | None = 86_400.0,
        clock: Callable[[], float] = time.time,
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
        self._clock = clock

    def feed(self, records: Sequence[Any]) -> FeedOutcome:
        """Validate ``records``, store the valid ones durably, and say what happened to each."""
        batch = validate_records(records)
        frame, rejected = self._service_limits(batch.frame, batch.accepted, batch.rejected)
        too_old = 0
        if frame.height:
            with self.lock:
                seq = self.journal.append(frame) if self.journal is not None else 0
                report = self.store.ingest(frame)
                self.tick_count += 1
                self.records += frame.height
                self.generation += 1
                step = int(frame[c.TIMESTAMP].max().timestamp()) // c.STEP_SECONDS  # type: ignore[union-attr]
                self.newest_step = max(self.newest_step, step)
                servers = len(self.store.servers)
            if self.journal is not None:
                self.journal.sync(seq)
            too_old = report.too_old
        else:
            servers = self.stats.servers
        bad = len({i.index for i in rejected})
        self._count(frame.height, bad, too_old)
        stats = self.stats
        body = {
            "status": "success" if not rejected else ("partial" if frame.height else "rejected"),
            "records_added": frame.height,
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

    def _service_limits(
        self, frame: pl.DataFrame, accepted: list[int], rejected: list[Issue]
    ) -> tuple[pl.DataFrame, list[Issue]]:
        """Refuse what the contract allows but a live daemon must not store.

        A timestamp far in the future would make every other server look idle (and be evicted);
        a value past :data:`MAX_UNBOUNDED` of a metric without an upper bound would overflow
        the windows' sums to infinity.
        """
        if frame.height == 0:
            return frame, rejected
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
            return frame, rejected
        issues = []
        for k, (column, _, reason) in enumerate(checks):
            rows = flags[str(k)].arg_true().to_list()
            values = frame[column].gather(rows).to_list()
            issues += [Issue(accepted[i], column, v, reason) for i, v in zip(rows, values, strict=True)]
        kept = frame.filter(~flags.select(pl.any_horizontal(pl.all())).to_series())
        return kept, sorted([*rejected, *issues], key=lambda i: (i.index or 0, i.field))

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
