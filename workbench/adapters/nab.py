"""NAB ``realAWSCloudwatch``: one CloudWatch metric of one AWS instance per ``timestamp,value`` file.

File names are ``<kind>_<instance id>.csv`` (e.g. ``ec2_cpu_utilization_24ae8d.csv``); all files
of one instance id become the server ``nab-<id>``. Kinds with a contract meaning:

* ``ec2_cpu_utilization``, ``rds_cpu_utilization``: CPU utilisation in % -> ``cpu_pct``;
* ``ec2_network_in``, ``ec2_network_out``: bytes received/sent per sample period -> MB/s;
* ``ec2_disk_write_bytes``: bytes written per sample period -> ``disk_io_mb_s`` (writes only).

Byte counts follow CloudWatch's ``NetworkIn``/``DiskWriteBytes`` (unit Bytes, the sum over the
period; with basic monitoring one data point per 5-minute period, so Average = Sum). They are
divided by the file's sample period (the median spacing of its timestamps, 300 s in NAB) and by
1024 x 1024 (1 MB = 1024 KB). Timestamps carry no zone and are taken as UTC. Other kinds
(request counts, ``grok_asg_anomaly``, ...) have no contract meaning: their files are skipped
and named in the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from workbench import contract
from workbench.adapters.policies import conform
from workbench.adapters.report import ImportReport, ImportResult
from workbench.adapters.tables import READ_ERRORS, read_table, stem
from workbench.adapters.times import UTC_TIME, parse_times
from workbench.adapters.units import MIB

FOLDER = "realAWSCloudwatch"
WINDOWS_FILE = "combined_windows.json"
SERVER_PREFIX = "nab-"
KINDS: dict[str, tuple[str, bool]] = {  # kind -> (contract metric, value is bytes per period)
    "ec2_cpu_utilization": ("cpu_pct", False),
    "rds_cpu_utilization": ("cpu_pct", False),
    "ec2_network_in": ("net_in_mb_s", True),
    "ec2_network_out": ("net_out_mb_s", True),
    "ec2_disk_write_bytes": ("disk_io_mb_s", True),
}
WINDOW_SCHEMA: dict[str, pl.DataType] = {
    contract.SERVER: pl.String(),
    "metric": pl.String(),
    "start": UTC_TIME,
    "end": UTC_TIME,
    "file": pl.String(),
}


def split_name(path: str | Path) -> tuple[str, str]:
    """Return ``(kind, instance id)`` of a NAB file name: the id is the part after the last ``_``."""
    kind, _, instance = stem(Path(path)).rpartition("_")
    return kind, instance


def nab_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Return the CSV files of NAB's AWS folder, of a folder holding it, or the files given.

    Raises:
        FileNotFoundError: when a source does not exist or holds no CSV file.
    """
    if not isinstance(source, str | Path):
        return sorted({f for s in source for f in nab_files(s)})
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(2, "no such NAB file or folder", str(source))
    if source.is_file():
        return [source]
    folder = source / FOLDER if (source / FOLDER).is_dir() else source
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FileNotFoundError(2, "no NAB .csv file found", str(folder))
    return files


def read_nab(
    source: str | Path | Sequence[str | Path], *, clip: bool = True, limit_servers: int | None = None
) -> ImportResult:
    """Import NAB AWS CloudWatch files as a contract frame.

    Args:
        source: NAB's data folder (holding ``realAWSCloudwatch``), that folder, or files.
        clip: Clip out-of-range samples to the contract range; else set them to null.
        limit_servers: Keep only this many instances (lowest ids first).

    Returns:
        The frame and the report; files of kinds without contract meaning are named in
        ``report.skipped_files``.
    """
    began = time.perf_counter()
    report = ImportReport(str(source) if isinstance(source, str | Path) else ", ".join(map(str, source)), "nab")
    files = _mapped_files(nab_files(source), report)
    if limit_servers is not None:
        keep = sorted({split_name(f)[1] for f in files})[:limit_servers]
        files = [f for f in files if split_name(f)[1] in keep]
    frames = [frame for f in files if (frame := _read_file(f, report)) is not None]
    if not frames:
        raise FileNotFoundError(2, "no NAB file with a contract meaning could be read", str(source))
    report.notes += [
        "units: bytes per sample period / period / 1024^2 -> MB/s (1 MB = 1024 KB); CPU utilisation in %",
        "timestamps: NAB text without zone, taken as UTC",
        "profile: generic for every server (not inferred); state: null (unknown)",
    ]
    frame = conform(pl.concat(frames, how="diagonal"), report, clip=clip)
    report.seconds = time.perf_counter() - began
    return ImportResult(frame, report)


def _mapped_files(files: list[Path], report: ImportReport) -> list[Path]:
    mapped = []
    for path in files:
        kind, instance = split_name(path)
        if kind in KINDS and instance:
            mapped.append(path)
        else:
            known = ", ".join(KINDS)
            report.skipped_files[str(path)] = f"kind {kind or stem(path)!r} has no contract meaning (mapped: {known})"
    return mapped


def _read_file(path: Path, report: ImportReport) -> pl.DataFrame | None:
    kind, instance = split_name(path)
    metric, is_bytes = KINDS[kind]
    try:
        raw, _ = read_table(path, ",")
        times, how = parse_times(raw.get_column("timestamp"))
        values = raw.get_column("value").str.strip_chars().cast(pl.Float64, strict=False)
    except (*READ_ERRORS, KeyError) as error:
        report.skipped_files[str(path)] = f"unreadable as NAB timestamp,value: {error}"
        return None
    report.files_read += 1
    if is_bytes:
        period = _period_seconds(times)
        values = values / (MIB * period)
        report.notes.append(f"{path.name}: {metric} = bytes per {period:g} s / {period:g} / 1024^2")
    return pl.DataFrame(
        {
            contract.TIMESTAMP: times,
            contract.SERVER: pl.Series([f"{SERVER_PREFIX}{instance}"] * len(times), dtype=pl.String),
            contract.PROFILE: pl.Series([contract.DEFAULT_PROFILE] * len(times), dtype=pl.String),
            metric: values,
        }
    )


def _period_seconds(times: pl.Series) -> float:
    spacing = times.drop_nulls().sort().diff().dt.total_seconds()
    median = spacing.filter(spacing > 0).median()
    return float(median) if isinstance(median, int | float) and median > 0 else float(contract.STEP_SECONDS)


def nab_windows(source: str | Path) -> pl.DataFrame:
    """Return NAB's labelled anomaly windows of the AWS files as a table, for real-data labels.

    Args:
        source: ``combined_windows.json``, or a folder holding it or holding ``realAWSCloudwatch``
            beside it.

    Returns:
        One row per window: ``server_name`` (``nab-<id>``), ``metric`` (the contract metric, null
        for kinds without one), ``start``, ``end`` (UTC) and ``file`` (as named in the JSON).
        Files with an empty window list give no row.

    Raises:
        FileNotFoundError: when no ``combined_windows.json`` is found.
    """
    path = _windows_path(Path(source))
    labels = json.loads(path.read_text())
    rows = []
    for name, windows in labels.items():
        if not name.startswith(f"{FOLDER}/"):
            continue
        kind, instance = split_name(name)
        metric = KINDS.get(kind, (None, False))[0]
        rows += [(f"{SERVER_PREFIX}{instance}", metric, start, end, name) for start, end in windows]
    table = pl.DataFrame(rows, schema={**WINDOW_SCHEMA, "start": pl.String, "end": pl.String}, orient="row")
    utc = [pl.col(c).str.to_datetime(time_unit="us").dt.replace_time_zone("UTC") for c in ("start", "end")]
    return table.with_columns(utc).sort(contract.SERVER, "start")


def _windows_path(source: Path) -> Path:
    for candidate in (source, source / WINDOWS_FILE, source.parent / WINDOWS_FILE):
        if candidate.is_file() and candidate.name == WINDOWS_FILE:
            return candidate
    raise FileNotFoundError(2, f"no {WINDOWS_FILE} found", str(source))
