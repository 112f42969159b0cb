"""JSON records (``POST /feed/data``, forwarders) checked against the contract, one issue per problem.

A record with any issue is refused whole, so no partial or altered value is stored; the valid
ones become a canonical contract frame. The checks are those of :mod:`workbench.contract`, with
the common case kept cheap: a plain number inside its range is accepted with two comparisons,
and the timestamps and server names that repeat across a batch are parsed once.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from workbench import contract as c
from workbench.errors import Issue

# Metric bounds as plain comparisons: NaN fails both, and ±inf fails the finite upper bound.
_BOUNDS: dict[str, tuple[float, float]] = {
    m.name: (m.low, m.high if m.high is not None else sys.float_info.max) for m in c.METRICS
}
_POSITION: dict[str, int] = {name: i for i, name in enumerate(c.COLUMNS)}
_KEYS: dict[str, str] = {**{name: name for name in c.COLUMNS}, **c.ALIASES}
_I_TIME, _I_SERVER, _I_PROFILE = _POSITION[c.TIMESTAMP], _POSITION[c.SERVER], _POSITION[c.PROFILE]


@dataclass(frozen=True)
class RecordBatch:
    """The outcome of validating JSON records: the valid rows and why the others were refused.

    Attributes:
        frame: Valid records as a canonical contract frame.
        accepted: Input index of each row of ``frame``.
        rejected: One issue per problem, naming index, field and reason.
        ignored_fields: Field names outside the contract that were dropped (e.g. ``load_average``).
    """

    frame: pl.DataFrame
    accepted: list[int]
    rejected: list[Issue]
    ignored_fields: list[str]


def validate_records(records: Sequence[Any]) -> RecordBatch:
    """Validate JSON records one by one, keeping the valid ones.

    Args:
        records: Decoded JSON objects, e.g. the ``records`` of a ``POST /feed/data`` body.

    Returns:
        The valid rows and the issues of the invalid ones.
    """
    checker = _Checker()
    rows: list[list[Any]] = []
    accepted: list[int] = []
    rejected: list[Issue] = []
    for index, raw in enumerate(records):
        row, issues = checker.record(index, raw)
        if issues:
            rejected.extend(issues)
        else:
            rows.append(row)
            accepted.append(index)
    columns = {name: [row[i] for row in rows] for i, name in enumerate(c.COLUMNS)}
    frame = pl.DataFrame(columns, schema=c.SCHEMA)
    return RecordBatch(frame, accepted, rejected, sorted(checker.ignored))


class _Checker:
    """Checks records of one batch, remembering the times and names it has already parsed."""

    def __init__(self) -> None:
        self.ignored: set[str] = set()
        self._times: dict[Any, tuple[Any, str | None]] = {}
        self._names: dict[Any, tuple[Any, str | None]] = {}

    def record(self, index: int, raw: Any) -> tuple[list[Any], list[Issue]]:
        """Return the record as a row in :data:`workbench.contract.COLUMNS` order and its issues."""
        if not isinstance(raw, Mapping):
            return [], [Issue(index, "<record>", raw, "must be a JSON object")]
        issues: list[Issue] = []
        row: list[Any] = [None] * len(c.COLUMNS)
        given: list[Any] = [None] * len(c.COLUMNS)  # the key that gave each column
        for key, value in raw.items():
            name = _KEYS.get(key)
            if name is None:
                self.ignored.add(str(key))
                continue
            position = _POSITION[name]
            if given[position] is not None:  # an alias beside its canonical name: they must agree
                if value != raw[given[position]]:
                    conflict = f"conflicts with {given[position]}={raw[given[position]]!r}: both give {name}"
                    issues.append(Issue(index, str(key), value, conflict))
                continue
            given[position] = key
            bounds = _BOUNDS.get(name)
            if bounds is not None and (type(value) is float or type(value) is int) and bounds[0] <= value <= bounds[1]:
                row[_POSITION[name]] = float(value)
                continue
            parsed, reason = self._field(name, value)
            if reason:
                issues.append(Issue(index, str(key), value, reason))
            else:
                row[_POSITION[name]] = parsed
        for key in (c.TIMESTAMP, c.SERVER):
            if key not in raw:
                issues.append(Issue(index, key, None, "required field is missing"))
        if row[_I_PROFILE] is None and row[_I_SERVER] is not None:
            row[_I_PROFILE] = c.infer_profile(row[_I_SERVER])
        return row, issues

    def _field(self, name: str, value: Any) -> tuple[Any, str | None]:
        if name == c.TIMESTAMP:
            return _cached(self._times, value, c.parse_timestamp)
        if name == c.SERVER:
            return _cached(self._names, value, _parse_server)
        if name in (c.STATE, c.PROFILE):
            allowed = c.STATES if name == c.STATE else c.PROFILES
            if value is None or value in allowed:
                return value, None
            return None, f"allowed: {', '.join(allowed)}"
        if value is None:
            return None, None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, "must be a number"
        metric = c.METRIC_BY_NAME[name]
        if not metric.contains(_as_float(value)):
            return None, f"must be finite and within {metric.allowed()} {metric.unit}"
        return float(value), None


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        return float("inf")


def _parse_server(value: Any) -> tuple[Any, str | None]:
    ok = isinstance(value, str) and c.SERVER_PATTERN.fullmatch(value) is not None
    return (value, None) if ok else (None, c.server_rule())


def _cached(cache: dict[Any, tuple[Any, str | None]], value: Any, parse: Any) -> tuple[Any, str | None]:
    """Parse hashable scalars once per batch (``True`` and ``1`` hash alike, so bools skip the cache)."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        result: tuple[Any, str | None] = parse(value)
        return result
    key = (type(value), value)
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = parse(value)
    return hit
