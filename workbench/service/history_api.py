"""``GET /history``: the archive's rows by table, servers and time range, as JSON, CSV or parquet.

Also the archive's families of ``GET /metrics`` (:class:`ArchiveCollector`).

The range is checked where it enters (one clear 422 per mistake) and capped at
:data:`MAX_RANGE`; without an ``end`` it ends at the newest row archived (data time, so a
replay of last month's data reads as naturally as today's), without a ``start`` it spans
:data:`DEFAULT_RANGE`. At most ``limit`` rows come back, oldest first, with ``truncated`` set
when there were more.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

import anyio
import polars as pl
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.service import schemas as s
from workbench.service.archive import Archive
from workbench.service.archive_rows import KINDS
from workbench.service.documents import dumps

MAX_RANGE = timedelta(days=31)
DEFAULT_RANGE = timedelta(days=1)
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 1_000_000
FORMATS = ("json", "csv", "parquet")
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def parse_time(name: str, text: str) -> datetime:
    """Return the UTC time of a query parameter: ISO 8601 (naive means UTC) or epoch seconds.

    Raises:
        ConfigError: naming the parameter, its value and what is allowed.
    """
    value: str | float = text
    try:
        value = float(text)
    except ValueError:
        pass
    when, reason = c.parse_timestamp(value)
    if when is None:
        raise ConfigError(f"{name}={text!r} {reason}")
    return when


@dataclass(frozen=True)
class HistoryAnswer:
    """One answer of ``GET /history``: the encoded body and what goes in its headers."""

    body: bytes
    media_type: str
    truncated: bool
    filename: str | None = None


def answer(
    archive: Archive,
    kind: str,
    servers: Sequence[str] | None,
    start: str | None,
    end: str | None,
    limit: int = DEFAULT_LIMIT,
    output: str = "json",
) -> HistoryAnswer:
    """Query the archive and encode the rows (blocking: run it off the event loop).

    Raises:
        ConfigError: for a bad kind, format, time, or range (the route answers 422).
    """
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}; allowed: {', '.join(KINDS)}")
    if output not in FORMATS:
        raise ConfigError(f"format={output!r}; allowed: {', '.join(FORMATS)}")
    first, last = time_range(archive, kind, start, end)
    frame, truncated = archive.query(kind, servers or None, first, last, limit)
    if output == "csv":
        return HistoryAnswer(_csv(frame), MEDIA_TYPES[output], truncated, f"history-{kind}.csv")
    if output == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return HistoryAnswer(buffer.getvalue(), MEDIA_TYPES[output], truncated, f"history-{kind}.parquet")
    head = {
        "kind": kind,
        "servers": list(servers) if servers else None,
        "start": first.isoformat() if first else None,
        "end": last.isoformat() if last else None,
        "count": frame.height,
        "limit": limit,
        "truncated": truncated,
        "columns": list(frame.columns),
    }
    body = dumps(head)[:-1] + b',"rows":' + frame.write_json().encode() + b"}"
    return HistoryAnswer(body, MEDIA_TYPES[output], truncated)


def time_range(
    archive: Archive, kind: str, start: str | None, end: str | None
) -> tuple[datetime | None, datetime | None]:
    """Return the inclusive range asked for, with the defaults filled in (``None``: the table is empty).

    Raises:
        ConfigError: for a time that does not parse, an end before the start, or a range over
            :data:`MAX_RANGE`.
    """
    first = parse_time("start", start) if start is not None else None
    last = parse_time("end", end) if end is not None else None
    if last is None:
        last = archive.newest(kind) if first is None else first + DEFAULT_RANGE
        if last is None:
            return None, None
    if first is None:
        first = last - DEFAULT_RANGE
    if last < first:
        raise ConfigError(f"end={last.isoformat()} lies before start={first.isoformat()}")
    if last - first > MAX_RANGE:
        days = MAX_RANGE.days
        raise ConfigError(
            f"the range {first.isoformat()} .. {last.isoformat()} spans more than {days} days; ask for less"
        )
    return first, last


class ArchiveCollector(Collector):
    """The archive's counters on ``GET /metrics``."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def collect(self) -> Iterator[Metric]:
        """Yield the archive's families."""
        status = self.archive.status(private=False)
        rows = CounterMetricFamily("workbench_history_rows", "Rows written to the history archive", labels=["kind"])
        for kind, n in status["rows_written"].items():
            rows.add_metric([kind], n)
        yield rows
        yield CounterMetricFamily(
            "workbench_history_rows_dropped", "History rows dropped: memory full while writes failed",
            value=status["rows_dropped"],
        )  # fmt: skip
        yield CounterMetricFamily(
            "workbench_history_flush_failures", "Failed writes of the history archive", value=status["flush_failures"]
        )
        yield GaugeMetricFamily(
            "workbench_history_buffered_rows",
            "History rows not yet written",
            value=sum(status["buffered_rows"].values()),
        )


def add_history_route(app: FastAPI, archive: Archive | None) -> None:
    """Add ``GET /history`` to ``app`` (404 with the reason when ``archive`` is ``None``)."""

    @app.get(
        "/history",
        response_model=s.ArchiveResponse,
        responses={
            200: {"content": {MEDIA_TYPES["csv"]: {}, MEDIA_TYPES["parquet"]: {}}},
            404: {"model": s.ErrorResponse, "description": "this daemon keeps no history"},
            422: {"model": s.ErrorResponse, "description": "a time that does not parse, or a range too long"},
        },
        tags=["read"],
    )
    async def history_archive(
        kind: Literal["metrics", "forecasts", "alerts"] = "metrics",
        server: Annotated[list[str] | None, Query(description="repeat for several; none: every server")] = None,
        start: Annotated[str | None, Query(description="ISO 8601 (UTC when naive) or epoch seconds")] = None,
        end: Annotated[str | None, Query(description="inclusive; default: the newest row archived")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        format: Literal["json", "csv", "parquet"] = "json",  # noqa: A002 (the query parameter's name)
    ) -> Response:
        """Return archived rows of one table, for some servers and a time range (data time, inclusive).

        ``metrics``: the records the daemon accepted; ``forecasts``: each forecast's quantiles at
        30 min, 1 h, 2 h, 4 h and 8 h ahead, by origin; ``alerts``: alert transitions. The range
        spans at most 31 days (default: the day before ``end``, which defaults to the newest
        row); at most ``limit`` rows, oldest first, ``truncated`` when there were more (also the
        ``X-History-Truncated`` header of CSV and parquet answers).
        """
        if archive is None:
            detail = "this daemon keeps no history: start it with --history-dir DIR (or a --state-dir)"
            return JSONResponse({"detail": detail, "rejected": []}, status_code=404)
        try:
            found = await anyio.to_thread.run_sync(answer, archive, kind, server, start, end, limit, format)
        except ConfigError as exc:
            return JSONResponse({"detail": str(exc), "rejected": []}, status_code=422)
        headers = {"X-History-Truncated": "true" if found.truncated else "false"}
        if found.filename:
            headers["Content-Disposition"] = f'attachment; filename="{found.filename}"'
        return Response(found.body, media_type=found.media_type, headers=headers)


def _csv(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()
