"""The data contract: the one place that defines columns, units, ranges, step, states, profiles.

Every stage (simulator, trainer, bundle, engine, service, dashboard) imports its names from
here; a model bundle stores :func:`contract_json` and refuses to load under a different one.
Input enters through :func:`validate` (polars frames) or :func:`workbench.records.validate_records`
(JSON records), which map the earlier system's aliases once and name every violation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import polars as pl

from workbench.errors import ContractError, Issue

CONTRACT_VERSION = "1.0.0"
STEP_SECONDS = 300
HORIZON_STEPS = 96
QUANTILE_LEVELS = (0.1, 0.5, 0.9)  # the band every forecast gives: p10, p50, p90
MAX_ENCODER_STEPS = 288
# Longest run of missing steps carried forward; a longer gap restarts a series' history (and warm-up).
MAX_GAP_STEPS = 6

TIMESTAMP = "timestamp"
SERVER = "server_name"
STATE = "state"
PROFILE = "profile"
SERVER_NAME_PATTERN = r"[A-Za-z0-9._:-]{1,128}"
TIMESTAMP_MIN = datetime(1990, 1, 1, tzinfo=UTC)
TIMESTAMP_MAX = datetime(2100, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Metric:
    """One metric of the contract.

    Attributes:
        name: Column name.
        unit: Physical unit.
        low: Smallest valid value.
        high: Largest valid value, ``None`` when unbounded.
        aggregation: How samples within one step are combined (``mean`` or ``max``).
        high_is_bad: Whether a high value is the dangerous direction (alerts use the p90).
        description: One line for humans.
        prometheus_name: Name in Prometheus' base units (``cpu_ratio``, ``latency_seconds``,
            ``disk_io_bytes_per_second``); the daemon's ``/metrics`` prefixes it.
        to_base: Factor from :attr:`unit` to the base unit of :attr:`prometheus_name`
            (1 MB = 1024² bytes, as :mod:`workbench.adapters.units` reads sizes).
    """

    name: str
    unit: str
    low: float
    high: float | None
    aggregation: Literal["mean", "max"]
    high_is_bad: bool
    description: str
    prometheus_name: str
    to_base: float

    def allowed(self) -> str:
        """Return the valid range as text, e.g. ``[0, 100]`` or ``>= 0``."""
        if self.high is None:
            return f">= {self.low:g}"
        return f"[{self.low:g}, {self.high:g}]"

    def contains(self, value: float) -> bool:
        """Return whether ``value`` is finite and within the valid range."""
        if not math.isfinite(value) or value < self.low:
            return False
        return self.high is None or value <= self.high


_PERCENT, _MIB, _MILLI = 0.01, 1024.0 * 1024.0, 0.001  # to ratio, bytes and seconds
METRICS: tuple[Metric, ...] = (
    Metric("cpu_pct", "%", 0, 100, "mean", True, "CPU utilisation", "cpu_ratio", _PERCENT),
    Metric("mem_pct", "%", 0, 100, "mean", True, "memory used", "memory_ratio", _PERCENT),
    Metric("disk_pct", "%", 0, 100, "mean", True, "filesystem used", "disk_ratio", _PERCENT),
    Metric(
        "disk_io_mb_s", "MB/s", 0, None, "mean", True, "disk read + write throughput",
        "disk_io_bytes_per_second", _MIB,
    ),
    Metric(
        "net_in_mb_s", "MB/s", 0, None, "mean", True, "network received",
        "network_receive_bytes_per_second", _MIB,
    ),
    Metric(
        "net_out_mb_s", "MB/s", 0, None, "mean", True, "network transmitted",
        "network_transmit_bytes_per_second", _MIB,
    ),
    Metric("latency_ms", "ms", 0, None, "max", True, "request latency", "latency_seconds", _MILLI),
    Metric("error_rate", "fraction", 0, 1, "max", True, "failed requests / requests", "error_ratio", 1.0),
)  # fmt: skip
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

STATES: tuple[str, ...] = (
    "healthy",
    "heavy_load",
    "critical_issue",
    "idle",
    "maintenance",
    "morning_spike",
    "offline",
    "recovery",
)
PROFILES: tuple[str, ...] = (
    "ml_compute",
    "database",
    "web_api",
    "conductor_mgmt",
    "data_ingest",
    "risk_analytics",
    "generic",
)
DEFAULT_PROFILE = "generic"
PROFILE_PREFIXES: dict[str, str] = {
    "ppml": "ml_compute",
    "ppdb": "database",
    "ppweb": "web_api",
    "ppcon": "conductor_mgmt",
    "ppetl": "data_ingest",
    "pprisk": "risk_analytics",
    "ppgen": "generic",
}
ALIASES: dict[str, str] = {
    "cpu_percent": "cpu_pct",
    "memory_percent": "mem_pct",
    "disk_percent": "disk_pct",
    "status": "state",
}
COLUMNS: tuple[str, ...] = (TIMESTAMP, SERVER, PROFILE, STATE, *METRIC_NAMES)
SCHEMA: dict[str, pl.DataType] = {
    TIMESTAMP: pl.Datetime("us", "UTC"),
    SERVER: pl.String(),
    PROFILE: pl.String(),
    STATE: pl.String(),
    **{name: pl.Float64() for name in METRIC_NAMES},
}

SERVER_PATTERN = re.compile(SERVER_NAME_PATTERN)
# Longest prefix first so that "pprisk" is not shadowed by a shorter prefix.
_PREFIXES = sorted(PROFILE_PREFIXES.items(), key=lambda kv: -len(kv[0]))


def high_is_bad(metrics: Sequence[str]) -> np.ndarray:
    """Return each metric's ``high_is_bad`` flag as a boolean array."""
    return np.array([METRIC_BY_NAME[m].high_is_bad for m in metrics], dtype=bool)


def infer_profile(server_name: str) -> str:
    """Return the profile implied by a server name's prefix, else ``generic``.

    Args:
        server_name: A contract-valid server name such as ``ppdb001``.
    """
    lowered = server_name.lower()
    for prefix, profile in _PREFIXES:
        if lowered.startswith(prefix):
            return profile
    return DEFAULT_PROFILE


def contract_json() -> dict[str, Any]:
    """Return the whole contract as plain JSON data (stored in every bundle and report)."""
    return {
        "version": CONTRACT_VERSION,
        "step_seconds": STEP_SECONDS,
        "horizon_steps": HORIZON_STEPS,
        "max_encoder_steps": MAX_ENCODER_STEPS,
        "keys": {"timestamp": TIMESTAMP, "server": SERVER, "server_pattern": SERVER_NAME_PATTERN},
        "metrics": [
            {
                "name": m.name,
                "unit": m.unit,
                "low": m.low,
                "high": m.high,
                "aggregation": m.aggregation,
                "high_is_bad": m.high_is_bad,
            }
            for m in METRICS
        ],
        "states": list(STATES),
        "profiles": list(PROFILES),
        "profile_prefixes": dict(PROFILE_PREFIXES),
        "aliases": dict(ALIASES),
    }


def contract_differences(stored: Mapping[str, Any]) -> list[str]:
    """List how a stored contract differs from the running one (empty when identical).

    Args:
        stored: A contract as written by :func:`contract_json`.
    """
    current = contract_json()
    diffs = []
    for key in sorted(set(current) | set(stored)):
        if key not in stored:
            diffs.append(f"{key}: missing in stored contract (running has {current[key]!r})")
        elif key not in current:
            diffs.append(f"{key}: stored contract has {stored[key]!r}, running has no such key")
        elif stored[key] != current[key]:
            diffs.append(f"{key}: stored {stored[key]!r} != running {current[key]!r}")
    return diffs


def check_metric_names(names: Sequence[str], *, what: str = "metric") -> list[str]:
    """Return ``names`` after checking each is a contract metric.

    Raises:
        ContractError: naming every unknown name and the allowed ones.
    """
    bad = [n for n in names if n not in METRIC_BY_NAME]
    if bad:
        allowed = ", ".join(METRIC_NAMES)
        raise ContractError([Issue(None, what, n, f"unknown metric; allowed: {allowed}") for n in bad])
    return list(names)


# --------------------------------------------------------------------------- frames


def validate(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate a polars frame against the contract and return it in canonical form.

    Aliased columns are renamed, unknown columns are dropped, missing metric columns are
    added as nulls, a missing profile is inferred from the server name, and timestamps become
    UTC. Values are never clipped or altered: any violation raises.

    Args:
        frame: Rows of ``timestamp``, ``server_name`` and any contract metrics.

    Returns:
        A frame with exactly :data:`COLUMNS` in :data:`SCHEMA` types.

    Raises:
        ContractError: naming row index, column, value and what is allowed.
    """
    frame = frame.rename({a: c for a, c in ALIASES.items() if a in frame.columns and c not in frame.columns})
    issues = [
        Issue(None, key, None, "required column is missing") for key in (TIMESTAMP, SERVER) if key not in frame.columns
    ]
    if issues:
        raise ContractError(issues)
    frame = frame.with_row_index("__row").select(
        "__row", *[_cast_expr(frame, col) for col in COLUMNS], *_raw_copies(frame)
    )
    issues = _frame_issues(frame)
    if issues:
        raise ContractError(issues)
    return frame.with_columns(pl.col(PROFILE).fill_null(profile_expr(pl.col(SERVER)))).select(COLUMNS)


def step_time(step: int) -> datetime:
    """Return the UTC start time of grid step ``step`` (epoch seconds // :data:`STEP_SECONDS`)."""
    return datetime.fromtimestamp(int(step) * STEP_SECONDS, UTC)


def to_grid(frame: pl.DataFrame) -> pl.DataFrame:
    """Bucket a validated frame onto the step grid: one row per server and step.

    Timestamps are floored to the step; metrics are combined with their contract aggregation
    (mean or max, ignoring missing values); the last known profile and state are kept.
    """
    metrics = [getattr(pl.col(m.name), m.aggregation)() for m in METRICS]
    return (
        frame.with_columns(pl.col(TIMESTAMP).dt.truncate(f"{STEP_SECONDS}s"))
        .group_by(SERVER, TIMESTAMP)
        .agg(pl.col(PROFILE).last(), pl.col(STATE).drop_nulls().last(), *metrics)
        .sort(SERVER, TIMESTAMP)
        .select(COLUMNS)
    )


def profile_expr(server: pl.Expr) -> pl.Expr:
    """Return a polars expression that infers the profile from server names (vectorised)."""
    lowered = server.str.to_lowercase()
    prefix, profile = _PREFIXES[0]
    chain: Any = pl.when(lowered.str.starts_with(prefix)).then(pl.lit(profile))
    for prefix, profile in _PREFIXES[1:]:
        chain = chain.when(lowered.str.starts_with(prefix)).then(pl.lit(profile))
    return chain.otherwise(pl.lit(DEFAULT_PROFILE))


def _cast_expr(frame: pl.DataFrame, col: str) -> pl.Expr:
    if col not in frame.columns:
        return pl.lit(None, dtype=SCHEMA[col]).alias(col)
    if col == TIMESTAMP:
        dtype = frame.schema[col]
        if isinstance(dtype, pl.Datetime):
            expr = pl.col(col) if dtype.time_zone else pl.col(col).dt.replace_time_zone("UTC")
            return expr.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        if dtype == pl.String:
            return pl.col(col).map_batches(_parse_time_strings, return_dtype=SCHEMA[TIMESTAMP])
        if dtype.is_numeric():  # epoch seconds
            micros = pl.col(col).cast(pl.Float64) * 1e6
            in_range = micros.is_finite() & (micros.abs() < 1e17)  # NaN, inf, 1e20 -> reported as invalid
            return pl.when(in_range).then(micros).cast(pl.Int64, strict=False).cast(pl.Datetime("us", "UTC"))
        return pl.lit(None, dtype=SCHEMA[col]).alias(col)
    if col in METRIC_BY_NAME and frame.schema[col] == pl.Boolean:
        return pl.lit(None, dtype=SCHEMA[col]).alias(col)  # reported as "must be a number"
    return pl.col(col).cast(SCHEMA[col], strict=False)


def _parse_time_strings(raw: pl.Series) -> pl.Series:
    # Fast path for one format; rows in another format (e.g. other UTC offsets) one by one.
    fast = raw.str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
    redo = (fast.is_null() & raw.is_not_null()).arg_true()
    if redo.len() == 0:
        return fast
    slow = [parse_timestamp(v)[0] for v in raw.gather(redo).to_list()]
    return fast.scatter(redo, pl.Series(slow, dtype=SCHEMA[TIMESTAMP]))


def _raw_copies(frame: pl.DataFrame) -> list[pl.Expr]:
    return [pl.col(c).alias(f"__raw_{c}") for c in COLUMNS if c in frame.columns]


def _frame_issues(frame: pl.DataFrame, limit: int = 50) -> list[Issue]:
    checks: list[tuple[str, pl.Expr, str]] = [
        (TIMESTAMP, pl.col(TIMESTAMP).is_null(), "must be an ISO 8601 time, a datetime or epoch seconds"),
        (
            TIMESTAMP,
            ~pl.col(TIMESTAMP).is_between(pl.lit(TIMESTAMP_MIN), pl.lit(TIMESTAMP_MAX), closed="left"),
            f"must lie between {TIMESTAMP_MIN:%Y-%m-%d} and {TIMESTAMP_MAX:%Y-%m-%d}",
        ),
        (SERVER, ~pl.col(SERVER).fill_null("").str.contains(f"^{SERVER_NAME_PATTERN}$"), server_rule()),
        (STATE, pl.col(STATE).is_not_null() & ~pl.col(STATE).is_in(STATES), f"allowed: {', '.join(STATES)}"),
        (PROFILE, pl.col(PROFILE).is_not_null() & ~pl.col(PROFILE).is_in(PROFILES), f"allowed: {', '.join(PROFILES)}"),
    ]
    for m in METRICS:
        raw = f"__raw_{m.name}"
        if raw in frame.columns:
            checks.append((m.name, pl.col(raw).is_not_null() & pl.col(m.name).is_null(), "must be a number"))
        value = pl.col(m.name)
        bad = ~value.is_finite() | (value < m.low)
        if m.high is not None:
            bad = bad | (value > m.high)
        checks.append((m.name, value.is_not_null() & bad, f"must be finite and within {m.allowed()} {m.unit}"))
    issues: list[Issue] = []
    for col, bad, reason in checks:
        raw_col = f"__raw_{col}" if f"__raw_{col}" in frame.columns else col
        for row in frame.filter(bad).select("__row", raw_col).head(limit - len(issues)).iter_rows():
            issues.append(Issue(row[0], col, row[1], reason))
        if len(issues) >= limit:
            break
    return sorted(issues, key=lambda i: (i.index if i.index is not None else -1, i.field))


def server_rule() -> str:
    """Describe the allowed server names."""
    return "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"


def parse_timestamp(value: Any) -> tuple[datetime | None, str | None]:
    """Parse an ISO 8601 string or epoch seconds to a UTC time; return ``(time, None)`` or ``(None, reason)``."""
    ts: datetime | None = None
    if isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            return None, "must be an ISO 8601 time such as 2025-10-13T16:00:00Z"
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        try:
            ts = datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            ts = None
    if ts is None:
        return None, "must be an ISO 8601 time or epoch seconds"
    try:  # an offset can push a valid local time past year 1 or 9999 (9999-12-31T23:59:59-05:00)
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except (OverflowError, ValueError):
        ts = None
    if ts is None or not TIMESTAMP_MIN <= ts < TIMESTAMP_MAX:
        return None, f"must lie between {TIMESTAMP_MIN:%Y-%m-%d} and {TIMESTAMP_MAX:%Y-%m-%d}"
    return ts, None
