"""Any CSV (plain or gzip, any separator) or parquet source, through a column mapping.

A mapping names, for each contract metric, the source column holding it (or several joined by
``+``, summed, e.g. disk read + write); a unit per metric converts it (see
:mod:`workbench.adapters.units`). Times are read from a time column (epoch s/ms/us/ns detected by
magnitude, ISO 8601 text, or a given format); servers from a server column or a fixed name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from workbench import contract
from workbench.adapters.policies import conform
from workbench.adapters.report import ImportReport, ImportResult
from workbench.adapters.tables import (
    as_numbers,
    available,
    read_table,
    server_name_from,
    stem,
    table_files,
    unknown_metric,
)
from workbench.adapters.times import UTC_TIME, parse_times
from workbench.adapters.units import unit_factor
from workbench.errors import ConfigError

TIME_NAMES = ("timestamp", "time", "datetime", "date", "ts")
_GENERIC_NOTE = "profile: generic for every server (not inferred; pass --profile to set one)"


@dataclass(frozen=True)
class ColumnMap:
    """How source columns become contract columns (build it with :func:`make_mapping`).

    Attributes:
        columns: Contract metric to the source columns summed into it.
        factors: Contract metric to the factor into its contract unit.
        units: Contract metric to the unit as given (for the report).
        time_column: Source time column, ``None`` to detect.
        time_format: Epoch unit or strftime format, ``None`` to detect.
        server_column: Source column of server names, or ``None``.
        server: Fixed server name, or ``None`` (then the file name, when no server column).
        profile: Profile of every server.
    """

    columns: dict[str, list[str]]
    factors: dict[str, float]
    units: dict[str, str] = field(default_factory=dict)
    time_column: str | None = None
    time_format: str | None = None
    server_column: str | None = None
    server: str | None = None
    profile: str = contract.DEFAULT_PROFILE


def make_mapping(
    columns: Mapping[str, str],
    units: Mapping[str, str | float] | None = None,
    *,
    time_column: str | None = None,
    time_format: str | None = None,
    server_column: str | None = None,
    server: str | None = None,
    profile: str | None = None,
) -> ColumnMap:
    """Check a column mapping against the contract and return it ready to apply.

    Args:
        columns: Contract metric to source column, e.g. ``{"cpu_pct": "CPU usage [%]"}``;
            ``"a+b"`` sums two source columns.
        units: Contract metric to source unit (e.g. ``"KB/s"``) or a number to multiply by.
        time_column: Source time column; ``None`` looks for timestamp/time/datetime/date/ts.
        time_format: ``s``/``ms``/``us``/``ns`` or a strftime format; ``None`` detects.
        server_column: Source column of server names.
        server: One fixed server name for all rows (not with ``server_column``).
        profile: A contract profile for every server; ``None`` is ``generic``.

    Raises:
        ConfigError: naming the unknown contract column, unit, profile or conflicting option
            and listing what is allowed.
    """
    if not columns:
        allowed = ", ".join(contract.METRIC_NAMES)
        raise ConfigError(f"map at least one contract metric, e.g. cpu_pct=<source column>; allowed: {allowed}")
    for name in [*columns, *(units or {})]:
        if name not in contract.METRIC_BY_NAME:
            raise unknown_metric(name)
    unmapped = [name for name in units or {} if name not in columns]
    if unmapped:
        raise ConfigError(f"unit given for {', '.join(unmapped)}, which is not mapped (mapped: {', '.join(columns)})")
    if server is not None and server_column is not None:
        raise ConfigError("give a server column or a fixed server name, not both")
    if server is not None and not contract.SERVER_PATTERN.fullmatch(server):
        raise ConfigError(f"server name {server!r}: {contract.server_rule()}")
    if profile is not None and profile not in contract.PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(contract.PROFILES)}")
    units = dict(units or {})
    return ColumnMap(
        columns={m: [part.strip() for part in src.split("+")] for m, src in columns.items()},
        factors={m: unit_factor(m, units.get(m)) for m in columns},
        units={m: str(u) for m, u in units.items()},
        time_column=time_column,
        time_format=time_format,
        server_column=server_column,
        server=server,
        profile=profile or contract.DEFAULT_PROFILE,
    )


def read_generic(
    source: str | Path,
    columns: Mapping[str, str] | ColumnMap,
    *,
    units: Mapping[str, str | float] | None = None,
    sep: str | None = None,
    time_column: str | None = None,
    time_format: str | None = None,
    server_column: str | None = None,
    server: str | None = None,
    profile: str | None = None,
    clip: bool = True,
    limit_servers: int | None = None,
) -> ImportResult:
    """Import a CSV or parquet file, or a folder of them, through a column mapping.

    Args:
        source: A ``.csv``/``.csv.gz``/``.tsv``/``.txt``/``.parquet`` file or a folder of them.
        columns: Contract metric to source column (see :func:`make_mapping`, which takes
            ``units`` to ``profile`` too), or a ready :class:`ColumnMap`.
        units: Contract metric to source unit or factor.
        sep: CSV separator of any length (semicolon + tab too); ``None`` detects it per file.
        time_column: Source time column; ``None`` detects it.
        time_format: Epoch unit or strftime format; ``None`` detects it.
        server_column: Source column of server names.
        server: Fixed server name (default: each file's name, when no server column).
        profile: Contract profile of every server (default ``generic``).
        clip: Clip out-of-range samples to the contract range; else set them to null.
        limit_servers: Keep only this many servers (first by name).

    Raises:
        ConfigError: for a bad mapping (see :func:`make_mapping`) and naming a missing source
            column with the file's columns listed.
        FileNotFoundError: when ``source`` does not exist or holds no table file.
    """
    mapping = columns
    if not isinstance(mapping, ColumnMap):
        options = {"time_column": time_column, "time_format": time_format, "profile": profile}
        mapping = make_mapping(mapping, units, server_column=server_column, server=server, **options)
    began = time.perf_counter()
    report = ImportReport(str(source), "generic")
    frames = [_samples(path, mapping, sep, report) for path in table_files(Path(source))]
    samples = pl.concat(frames)
    if limit_servers is not None:
        keep = samples.get_column(contract.SERVER).unique().sort().head(limit_servers)
        samples = samples.filter(pl.col(contract.SERVER).is_in(keep.implode()))
    report.notes += _notes(mapping)
    frame = conform(samples, report, clip=clip)
    report.seconds = time.perf_counter() - began
    return ImportResult(frame, report)


def _samples(path: Path, mapping: ColumnMap, sep: str | None, report: ImportReport) -> pl.DataFrame:
    raw, used = read_table(path, sep)
    report.files_read += 1
    wanted = [mapping.time_column or _time_column(raw, path), *[c for cols in mapping.columns.values() for c in cols]]
    wanted += [mapping.server_column] if mapping.server_column else []
    missing = [c for c in dict.fromkeys(wanted) if c not in raw.columns]
    if missing:
        raise ConfigError(
            f"{path}: source column(s) {', '.join(map(repr, missing))} not found; available: {available(raw)}"
            + (f" (separator {used!r}; pass --sep if that is wrong)" if used is not None and raw.width == 1 else "")
        )
    if raw.height == 0:
        report.skipped_files[str(path)] = "no rows"
        times = pl.Series(wanted[0], [], dtype=UTC_TIME)
    else:
        times, how = parse_times(raw.get_column(wanted[0]), mapping.time_format)
        report.notes.append(f"{path.name}: time column {wanted[0]!r} read as {how}")
    metrics = {
        m: pl.sum_horizontal(*[as_numbers(raw, c) for c in cols], ignore_nulls=False)
        for m, cols in mapping.columns.items()
    }
    _count_non_numeric(raw, mapping, report)
    return raw.select(
        times.alias(contract.TIMESTAMP),
        _server(path, mapping).alias(contract.SERVER),
        pl.lit(mapping.profile).alias(contract.PROFILE),
        *[(expr * mapping.factors[m]).alias(m) for m, expr in metrics.items()],
    )


def _time_column(raw: pl.DataFrame, path: Path) -> str:
    by_lower = {c.lower(): c for c in raw.columns}
    for name in TIME_NAMES:
        if name in by_lower:
            return by_lower[name]
    for column in raw.columns:
        if "time" in column.lower() or "date" in column.lower():
            return column
    raise ConfigError(f"{path}: no time column found; pass one with --time-column; available: {available(raw)}")


def _server(path: Path, mapping: ColumnMap) -> pl.Expr:
    if mapping.server_column:
        return pl.col(mapping.server_column).cast(pl.String).str.strip_chars()
    return pl.lit(mapping.server or server_name_from(stem(path)))


def _count_non_numeric(raw: pl.DataFrame, mapping: ColumnMap, report: ImportReport) -> None:
    for metric, cols in mapping.columns.items():
        lost = raw.select(
            pl.sum_horizontal(*[(pl.col(c).is_not_null() & as_numbers(raw, c).is_null()).sum() for c in cols])
        ).item()
        if lost:
            report.non_numeric[metric] = report.non_numeric.get(metric, 0) + int(lost)


def _notes(mapping: ColumnMap) -> list[str]:
    mapped = ", ".join(
        f"{m} = {' + '.join(cols)}"
        + (f" [{mapping.units[m]} x {mapping.factors[m]:.6g}]" if m in mapping.units else "")
        for m, cols in mapping.columns.items()
    )
    notes = [f"mapping: {mapped} (1 MB = 1024 KB)"]
    if not mapping.server_column and not mapping.server:
        notes.append("server: named after each file (no server column or name given)")
    given = mapping.profile != contract.DEFAULT_PROFILE
    notes.append(f"profile: {mapping.profile} for every server (given)" if given else _GENERIC_NOTE)
    notes.append("state: null (unknown) for every row; unmapped metrics: null columns")
    return notes
