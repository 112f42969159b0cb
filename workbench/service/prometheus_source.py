"""``workbench forward --prometheus``: metrics from Prometheus (node_exporter) into the inference daemon.

Every ``--interval`` seconds the forwarder asks Prometheus' HTTP API (``GET /api/v1/query_range``,
``step=300s``) for the newest complete 5-minute steps, one PromQL query per contract metric;
maps each series' ``instance`` label onto a contract server name; and posts the values not yet
sent as records to the daemon's ``POST /feed/data``, retrying with back-off while the daemon is
unreachable or answers 5xx.

The record of the step that starts at S carries the query evaluated at S + 5 min, the step's
end, so ``rate(...[5m])`` covers exactly that step; a step is read ``lag`` seconds after it
ends, once the scrapes around its end have arrived. What was sent is remembered per server and
metric, in memory only: a restarted forwarder sends the last ``backfill`` minutes again. The
daemon adds a resent value to its step like any other sample of that step, so an identical
value leaves the step's mean and max unchanged.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import polars as pl

from workbench import contract as c
from workbench.errors import ConfigError

log = logging.getLogger(__name__)

QUERY_RANGE_PATH = "/api/v1/query_range"
FEED_PATH = "/feed/data"
CATCH_UP_STEPS = c.MAX_ENCODER_STEPS  # the most the daemon's windows hold: older steps are not fetched
RETRY_STATUSES = frozenset({408, 425, 429})
MAX_REFUSALS_LOGGED = 10
_REAL_FS = 'fstype!~"tmpfs|overlay|squashfs"'
_NOT_LO = 'device!="lo"'
DEFAULT_QUERIES: dict[str, str] = {
    "cpu_pct": '100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])))',
    "mem_pct": "100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)",
    "disk_pct": (
        f"100 * max by (instance) (1 - node_filesystem_avail_bytes{{{_REAL_FS}}}"
        f" / node_filesystem_size_bytes{{{_REAL_FS}}})"
    ),
    "disk_io_mb_s": (
        "sum by (instance) (rate(node_disk_read_bytes_total[5m]) + rate(node_disk_written_bytes_total[5m])) / 1048576"
    ),
    "net_in_mb_s": f"sum by (instance) (rate(node_network_receive_bytes_total{{{_NOT_LO}}}[5m])) / 1048576",
    "net_out_mb_s": f"sum by (instance) (rate(node_network_transmit_bytes_total{{{_NOT_LO}}}[5m])) / 1048576",
}
SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    c.SERVER: pl.String(),
    c.TIMESTAMP: pl.Datetime("us", "UTC"),
    "metric": pl.String(),
    "value": pl.Float64(),
}
_BRACKETED = re.compile(r"^\[(?P<host>[^\]]*)\](?::\d+)?$")  # [::1]:9100
_WITH_PORT = re.compile(r"^(?P<host>[^:]*):\d+$")  # host:9100
_OUTSIDE_NAME = re.compile(r"[^A-Za-z0-9._:-]")


class PrometheusError(Exception):
    """A query Prometheus did not answer with a matrix; the message says why."""


# --------------------------------------------------------------------------- queries


def default_queries(label: str = "instance") -> dict[str, str]:
    """Return the node_exporter queries, aggregated by ``label`` instead of ``instance``."""
    return {metric: query.replace("by (instance)", f"by ({label})") for metric, query in DEFAULT_QUERIES.items()}


def parse_query_options(items: Sequence[str], label: str = "instance") -> dict[str, str]:
    """Return the default queries updated by ``METRIC=PROMQL`` items (an empty PROMQL drops a metric).

    Raises:
        ConfigError: for an item without ``=`` or naming no contract metric.
    """
    queries = default_queries(label)
    for item in items:
        metric, sep, query = item.partition("=")
        metric = metric.strip()
        if not sep or metric not in c.METRIC_BY_NAME:
            allowed = ", ".join(c.METRIC_NAMES)
            raise ConfigError(f"--query {item!r}: expected METRIC=PROMQL with METRIC one of {allowed}")
        if query.strip():
            queries[metric] = query.strip()
        else:
            queries.pop(metric, None)
    if not queries:
        raise ConfigError("every metric's query was dropped: nothing to forward")
    return queries


def query_range_url(base: str, query: str, start: float, end: float, step: int = c.STEP_SECONDS) -> httpx.URL:
    """Return the ``GET /api/v1/query_range`` URL evaluating ``query`` every ``step`` s from ``start`` to ``end``.

    Args:
        base: Prometheus base URL, e.g. ``http://127.0.0.1:9090`` (a path prefix is kept).
        query: PromQL expression.
        start: First evaluation time, epoch seconds.
        end: Last evaluation time, epoch seconds.
        step: Seconds between evaluations.
    """
    params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}s"}
    return httpx.URL(base.rstrip("/") + QUERY_RANGE_PATH, params=params)


def server_name(raw: Any) -> str | None:
    """Map a label value such as ``web-7.example:9100`` onto a contract server name (``None`` when empty).

    The ``:port`` is stripped (also from ``[ipv6]:port``), characters outside the contract's
    server-name pattern become ``_`` and the name is cut to 128 characters.
    """
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    match = _BRACKETED.match(text) or _WITH_PORT.match(text)
    host = match.group("host") if match else text
    name = _OUTSIDE_NAME.sub("_", host)[:128]
    return name or None


def parse_matrix(doc: Mapping[str, Any], metric: str, label: str = "instance") -> pl.DataFrame:
    """Turn a ``query_range`` answer into samples: one row per server, step and metric.

    A value evaluated at time T describes the step ending at T, so its timestamp is T - 5 min.
    NaN and infinite values are dropped; series without ``label`` are skipped (with a warning);
    series that map onto the same server are combined with the metric's contract aggregation.

    Args:
        doc: The decoded JSON answer.
        metric: The contract metric the query computes.
        label: The label naming the server.

    Returns:
        A frame of :data:`SAMPLE_SCHEMA` (``server_name``, ``timestamp``, ``metric``, ``value``).

    Raises:
        PrometheusError: when the answer is an error or not a matrix.
    """
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if doc.get("status") != "success" or not isinstance(data, Mapping):
        raise PrometheusError(f"{doc.get('errorType', 'error')}: {doc.get('error', 'no data in the answer')}")
    if data.get("resultType") != "matrix":
        raise PrometheusError(f"expected a matrix (a range query of an instant vector), got {data.get('resultType')}")
    names: list[str] = []
    times: list[int] = []
    values: list[float] = []
    unlabelled = 0
    for series in data.get("result") or []:
        name = server_name((series.get("metric") or {}).get(label))
        if name is None:
            unlabelled += 1
            continue
        for when, raw in series.get("values") or []:
            value = float(raw)
            if math.isfinite(value):
                names.append(name)
                times.append((round(float(when)) // c.STEP_SECONDS - 1) * c.STEP_SECONDS * 1_000_000)
                values.append(value)
    if unlabelled:
        log.warning(
            "%s: %d series without the label %r skipped (aggregate `by (%s)`)", metric, unlabelled, label, label
        )
    frame = pl.DataFrame(
        {c.SERVER: names, c.TIMESTAMP: times, "value": values},
        schema={c.SERVER: pl.String(), c.TIMESTAMP: pl.Int64(), "value": pl.Float64()},
    ).with_columns(pl.col(c.TIMESTAMP).cast(SAMPLE_SCHEMA[c.TIMESTAMP]), pl.lit(metric).alias("metric"))
    combine = getattr(pl.col("value"), c.METRIC_BY_NAME[metric].aggregation)()
    return frame.group_by(c.SERVER, c.TIMESTAMP, "metric").agg(combine).select(list(SAMPLE_SCHEMA))


def empty_samples() -> pl.DataFrame:
    """Return a frame of :data:`SAMPLE_SCHEMA` without rows."""
    return pl.DataFrame(schema=SAMPLE_SCHEMA)


# --------------------------------------------------------------------------- records


def fit_ranges(samples: pl.DataFrame, *, clip: bool) -> tuple[pl.DataFrame, int]:
    """Clip values outside their metric's contract range (``clip``) or leave them for the daemon to refuse.

    Rate jitter puts e.g. ``cpu_pct`` a little below 0 now and then; one such value would
    otherwise cost the whole record of its server and step.

    Returns:
        The samples and how many values lie outside their range.
    """
    bounds = pl.DataFrame(
        {
            "metric": list(c.METRIC_NAMES),
            "__low": [m.low for m in c.METRICS],
            "__high": [m.high if m.high is not None else math.inf for m in c.METRICS],
        },
        schema={"metric": pl.String(), "__low": pl.Float64(), "__high": pl.Float64()},
    )
    joined = samples.join(bounds, on="metric", how="left")
    outside = int(joined.select(~pl.col("value").is_between("__low", "__high")).to_series().sum())
    if clip and outside:
        joined = joined.with_columns(pl.col("value").clip(pl.col("__low"), pl.col("__high")))
    return joined.drop("__low", "__high"), outside


def assemble_records(samples: pl.DataFrame, profiles: Mapping[str, str]) -> list[dict[str, Any]]:
    """Return one ``/feed/data`` record per server and step, holding the metrics it has values for.

    Args:
        samples: Rows of :data:`SAMPLE_SCHEMA`.
        profiles: Profile of each server.
    """
    if samples.height == 0:
        return []
    wide = samples.pivot(on="metric", index=[c.SERVER, c.TIMESTAMP], values="value").sort(c.SERVER, c.TIMESTAMP)
    metrics = [m for m in c.METRIC_NAMES if m in wide.columns]
    wide = wide.with_columns(pl.col(c.TIMESTAMP).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    records = []
    for row in wide.iter_rows(named=True):
        record = {c.TIMESTAMP: row[c.TIMESTAMP], c.SERVER: row[c.SERVER], c.PROFILE: profiles[row[c.SERVER]]}
        record.update((m, row[m]) for m in metrics if row[m] is not None)
        records.append(record)
    return records


def _step(expr: pl.Expr) -> pl.Expr:
    return expr.dt.epoch("s") // c.STEP_SECONDS


# --------------------------------------------------------------------------- the daemon


@dataclass
class FeedResult:
    """What the daemon did with a list of records.

    Attributes:
        accepted: Records stored.
        refused: Input index of each refused record, with the daemon's reasons.
        too_old: Accepted records older than the daemon's windows, which it dropped.
    """

    accepted: int = 0
    refused: dict[int, list[str]] = field(default_factory=dict)
    too_old: int = 0

    def add(self, other: FeedResult, offset: int) -> None:
        """Add the result of a batch that started at record ``offset``."""
        self.accepted += other.accepted
        self.too_old += other.too_old
        self.refused.update({offset + i: why for i, why in other.refused.items()})


class FeedClient:
    """Posts records to ``POST /feed/data`` in batches, with exponential back-off.

    Connection errors, 408/425/429 and 5xx answers are retried (0.5 s, 1 s, 2 s, ... up to
    ``max_backoff``) until the daemon answers; a 4xx answer is final: the daemon kept the valid
    records and named the others.

    Args:
        client: HTTP client whose base URL is the daemon (and which carries the ``X-API-Key``).
        batch: Most records per POST.
        max_backoff: Longest pause between tries, seconds.
        sleep: Sleep function (injectable for tests).
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        batch: int = 5000,
        max_backoff: float = 30.0,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.client = client
        self.batch = batch
        self.max_backoff = max_backoff
        self.sleep = sleep

    def send(self, records: Sequence[Mapping[str, Any]]) -> FeedResult:
        """Deliver ``records``; return how many were accepted and why the others were refused.

        Raises:
            ConfigError: when the daemon refuses the API key (401 or 403).
        """
        result = FeedResult()
        for start in range(0, len(records), self.batch):
            result.add(self._post(records[start : start + self.batch]), start)
        return result

    def _post(self, records: Sequence[Mapping[str, Any]]) -> FeedResult:
        delay = 0.5
        while True:
            try:
                response = self.client.post(FEED_PATH, json={"records": list(records)})
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status in (401, 403):
                    raise ConfigError(f"the daemon refused the X-API-Key (HTTP {status}): check --api-key-env")
                if status < 300 or (status < 500 and status not in RETRY_STATUSES):
                    return _feed_result(response, len(records))
                problem = f"HTTP {status}: {_detail(response)}"
            log.warning("daemon not reached (%s); retrying in %.1f s", problem, delay)
            self.sleep(delay)
            delay = min(2 * delay, self.max_backoff)


def _feed_result(response: httpx.Response, count: int) -> FeedResult:
    try:
        body = response.json()
    except ValueError:
        body = {}
    too_old = int(body.get("too_old") or 0)
    if response.status_code < 300:
        return FeedResult(int(body.get("records_added", count)), too_old=too_old)
    reasons: dict[int, list[str]] = {}
    for issue in body.get("rejected") or []:
        index = issue.get("index")
        if isinstance(index, int):
            reasons.setdefault(index, []).append(f"{issue.get('field')}: {issue.get('error')}")
    if not reasons:  # the body as a whole was refused (400, 413, 422 without records)
        why = f"HTTP {response.status_code}: {_detail(response)}"
        reasons = {i: [why] for i in range(count)}
    return FeedResult(int(body.get("records_added", 0)), reasons, too_old)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, Mapping) and "error" in body:  # Prometheus: {"errorType": "bad_data", "error": ...}
        return f"{body.get('errorType', 'error')}: {body['error']}"[:300]
    if isinstance(body, Mapping):
        return str(body.get("detail") or body)[:300]
    return str(body)[:200]


# --------------------------------------------------------------------------- the loop


@dataclass
class CycleReport:
    """What one cycle did.

    Attributes:
        first: Oldest step start read (``None`` when nothing was new).
        last: Newest step start read.
        servers: Servers with values not sent before.
        records: Records sent.
        values: Metric values in them.
        accepted: Records the daemon stored.
        too_old: Accepted records older than the daemon's windows (dropped by it).
        refused: One line per refused record: server, time and the daemon's reasons.
        failed: Metrics whose query failed, with the reason.
        outside: Values outside their contract range.
        clipped: Whether those were clipped to it (else sent as they are, for the daemon to refuse).
    """

    first: datetime | None = None
    last: datetime | None = None
    servers: int = 0
    records: int = 0
    values: int = 0
    accepted: int = 0
    too_old: int = 0
    refused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outside: int = 0
    clipped: bool = True

    def summary(self) -> str:
        """Return the cycle as one log line."""
        failed = f"queries failed: {', '.join(self.failed)}" if self.failed else ""
        if self.last is None:
            return failed or "nothing new: the newest complete step was read already"
        span = f"{self.first:%Y-%m-%d %H:%M}-{self.last:%H:%M} UTC"
        text = (
            f"steps {span}: sent {_count(self.records, 'record')} ({_count(self.values, 'value')}) "
            f"of {_count(self.servers, 'server')}, "
            f"{self.accepted} accepted, {len(self.refused)} refused"
        )
        if self.too_old:
            text += f" ({self.too_old} older than the daemon's windows)"
        if self.outside:
            text += f", {self.outside} values outside their contract range ({'clipped' if self.clipped else 'sent'})"
        return f"{text}; {failed}" if failed else text


class PrometheusForwarder:
    """Reads Prometheus each cycle and sends the values not yet sent to the daemon.

    Args:
        prometheus: HTTP client for Prometheus (its transport is injectable for tests).
        feed: Where the records go.
        base_url: Prometheus base URL.
        queries: One PromQL expression per contract metric.
        label: The label naming the server.
        profile: Profile of every server (``None``: from the name's prefix).
        backfill_steps: Steps read again each cycle (and sent when not sent yet, as after a restart).
        lag: Seconds after a step's end before it is read.
        clip: Clip values outside the contract range instead of sending them to be refused.
        clock: UTC epoch seconds (injectable for tests).
    """

    def __init__(
        self,
        prometheus: httpx.Client,
        feed: FeedClient,
        *,
        base_url: str,
        queries: Mapping[str, str] | None = None,
        label: str = "instance",
        profile: str | None = None,
        backfill_steps: int = 12,
        lag: float = 60.0,
        clip: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prometheus = prometheus
        self.feed = feed
        self.base_url = base_url
        self.queries = dict(queries) if queries is not None else default_queries(label)
        self.label = label
        self.profile = profile
        self.backfill_steps = max(1, backfill_steps)
        self.lag = lag
        self.clip = clip
        self.clock = clock
        self.sent: dict[tuple[str, str], int] = {}  # (server, metric) -> newest step sent
        self.fetched: dict[str, int] = {}  # metric -> newest step its query answered for
        self.profiles: dict[str, str] = {}

    def newest_step(self) -> int:
        """Return the index of the newest step that ended at least ``lag`` seconds ago."""
        return int((self.clock() - self.lag) // c.STEP_SECONDS) - 1

    def fetch(self, metric: str, first: int, last: int) -> pl.DataFrame:
        """Return the samples of one metric for steps ``first`` to ``last``.

        Raises:
            PrometheusError: when Prometheus is unreachable or refuses the query.
        """
        start, end = (first + 1) * c.STEP_SECONDS, (last + 1) * c.STEP_SECONDS  # each step's end
        url = query_range_url(self.base_url, self.queries[metric], start, end)
        try:
            response = self.prometheus.get(url)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PrometheusError(f"HTTP {response.status_code}: {_detail(response)}")
        try:
            doc = response.json()
        except ValueError as exc:
            raise PrometheusError(f"not JSON: {response.text[:200]!r}") from exc
        return parse_matrix(doc, metric, self.label)

    def cycle(self) -> CycleReport:
        """Read the steps not yet read, send the values not yet sent, log what happened."""
        last = self.newest_step()
        due = [m for m in self.queries if self.fetched.get(m, -1) < last]
        report = CycleReport(clipped=self.clip)
        if not due:
            log.info(report.summary())
            return report
        samples = self._unsent(self._read(due, last, report))
        samples, report.outside = fit_ranges(samples, clip=self.clip)
        self._send(samples, report)
        self._forget(last)
        log.info(report.summary())
        for line in report.refused[:MAX_REFUSALS_LOGGED]:
            log.warning("refused: %s", line)
        if len(report.refused) > MAX_REFUSALS_LOGGED:
            log.warning("refused: %d more records", len(report.refused) - MAX_REFUSALS_LOGGED)
        return report

    def run(self, interval: float, cycles: int | None = None, sleep: Callable[[float], Any] = time.sleep) -> None:
        """Run a cycle every ``interval`` seconds, ``cycles`` times (``None``: until interrupted)."""
        done = 0
        while cycles is None or done < cycles:
            began = self.clock()
            self.cycle()
            done += 1
            if cycles is None or done < cycles:
                sleep(max(0.0, interval - (self.clock() - began)))

    def _read(self, metrics: list[str], last: int, report: CycleReport) -> pl.DataFrame:
        frames = []
        for metric in metrics:
            first = min(last - self.backfill_steps + 1, self.fetched.get(metric, last) + 1)
            first = max(first, last - CATCH_UP_STEPS + 1)
            try:
                frames.append(self.fetch(metric, first, last))
            except PrometheusError as exc:
                report.failed[metric] = str(exc)
                log.warning("query for %s failed: %s", metric, exc)
                continue
            self.fetched[metric] = last
            report.first = min(report.first or c.step_time(first), c.step_time(first))
            report.last = c.step_time(last)
        return pl.concat(frames) if frames else empty_samples()

    def _unsent(self, samples: pl.DataFrame) -> pl.DataFrame:
        if not self.sent or samples.height == 0:
            return samples
        done = pl.DataFrame(
            [(s, m, step) for (s, m), step in self.sent.items()],
            schema={c.SERVER: pl.String(), "metric": pl.String(), "__sent": pl.Int64()},
            orient="row",
        )
        keep = pl.col("__sent").is_null() | (_step(pl.col(c.TIMESTAMP)) > pl.col("__sent"))
        return samples.join(done, on=[c.SERVER, "metric"], how="left").filter(keep).drop("__sent")

    def _send(self, samples: pl.DataFrame, report: CycleReport) -> None:
        servers = samples[c.SERVER].unique().sort().to_list()
        records = assemble_records(samples, {s: self._profile(s) for s in servers})
        result = self.feed.send(records) if records else FeedResult()
        newest = samples.group_by(c.SERVER, "metric").agg(_step(pl.col(c.TIMESTAMP)).max().alias("step"))
        self.sent.update(((s, m), step) for s, m, step in newest.iter_rows())
        report.servers, report.records, report.values = len(servers), len(records), samples.height
        report.accepted, report.too_old = result.accepted, result.too_old
        report.refused = [_refusal(records[i], why) for i, why in sorted(result.refused.items())]

    def _forget(self, last: int) -> None:
        oldest = last - CATCH_UP_STEPS
        self.sent = {key: step for key, step in self.sent.items() if step > oldest}

    def _profile(self, server: str) -> str:
        if server not in self.profiles:
            profile = self.profile or c.infer_profile(server)
            if self.profile is None and not any(server.lower().startswith(p) for p in c.PROFILE_PREFIXES):
                log.info(
                    "note: %s matches no profile prefix: sent as profile %s (set one with --profile)", server, profile
                )
            self.profiles[server] = profile
        return self.profiles[server]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _refusal(record: Mapping[str, Any], reasons: list[str]) -> str:
    return f"{record.get(c.SERVER)} at {record.get(c.TIMESTAMP)}: {'; '.join(reasons)}"
