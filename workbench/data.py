"""Parquet IO for contract frames: hive-partitioned by UTC date, validated on the way in.

Layout written by :func:`write_parquet`::

    out_dir/
        contract.json
        incidents.parquet          (simulated data: the incidents' ground truth)
        metrics/date=2025-01-06/part-0.parquet
        metrics/date=2025-01-07/part-0.parquet
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench import contract
from workbench.errors import ContractError, Issue
from workbench.simulator.incidents import GROUND_TRUTH_SCHEMA

METRICS_DIR = "metrics"
CONTRACT_FILE = "contract.json"
INCIDENTS_FILE = "incidents.parquet"
PARTITION = "date"


def write_parquet(
    frame: pl.DataFrame | Iterable[pl.DataFrame],
    out_dir: str | Path,
    *,
    incidents: pl.DataFrame | None = None,
    overwrite: bool = False,
) -> Path:
    """Write contract rows as parquet partitioned by UTC date, with ``contract.json`` beside it.

    Args:
        frame: A contract frame (e.g. from :func:`workbench.simulator.generate` or
            :func:`read_frame`), or an iterable of them (e.g.
            :meth:`workbench.simulator.BatchRun.frames`), written one chunk at a time while the
            next is produced; a date split over chunks gets one part file per chunk.
        out_dir: Dataset folder; created when missing.
        incidents: Ground truth to write as ``incidents.parquet`` (e.g.
            :attr:`workbench.simulator.Simulation.incidents`); without it, a stale
            ``incidents.parquet`` is removed (:func:`write_incidents` can add it later).
        overwrite: Replace an existing ``metrics`` folder instead of refusing.

    Returns:
        ``out_dir``, which :func:`read_frame` and :func:`read_incidents` accept.

    Raises:
        ContractError: when contract columns are missing.
        FileExistsError: when ``out_dir`` already holds data and ``overwrite`` is false.
    """
    if isinstance(frame, pl.DataFrame):
        _check_columns(frame)
    out_dir = Path(out_dir)
    target = out_dir / METRICS_DIR
    if target.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "dataset already exists", str(target))
    if incidents is not None:
        incidents = _ground_truth(incidents, "incidents")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".metrics-", dir=out_dir))
    try:
        _write_partitions([frame] if isinstance(frame, pl.DataFrame) else frame, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (out_dir / CONTRACT_FILE).write_text(json.dumps(contract.contract_json(), indent=2) + "\n")
    (out_dir / INCIDENTS_FILE).unlink(missing_ok=True)
    if incidents is not None:
        write_incidents(incidents, out_dir)
    return out_dir


def write_incidents(incidents: pl.DataFrame, out_dir: str | Path) -> Path:
    """Write the incidents' ground truth as ``incidents.parquet`` in a dataset folder.

    Args:
        incidents: Ground truth (:data:`workbench.simulator.GROUND_TRUTH_SCHEMA`).
        out_dir: Dataset folder (created when missing).

    Returns:
        The file written.

    Raises:
        ContractError: when ground-truth columns are missing.
    """
    table = _ground_truth(incidents, "incidents")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    file = Path(out_dir) / INCIDENTS_FILE
    table.write_parquet(file)
    return file


def _write_partitions(chunks: Iterable[pl.DataFrame], folder: Path) -> None:
    """Write each chunk's dates as part files; the writes overlap with producing the next chunk."""
    parts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[None] | None = None
        for chunk in chunks:
            _check_columns(chunk)
            files = []
            for (day,), part in _by_date(chunk.select(contract.COLUMNS)):
                name = f"{PARTITION}={day:%Y-%m-%d}"
                files.append((folder / name / f"part-{parts.get(name, 0)}.parquet", part))
                parts[name] = parts.get(name, 0) + 1
            if pending is not None:
                pending.result()
            pending = pool.submit(_write_files, files)
        if pending is not None:
            pending.result()


def _check_columns(frame: pl.DataFrame) -> None:
    missing = [c for c in contract.COLUMNS if c not in frame.columns]
    if missing:
        raise ContractError([Issue(None, c, None, "required column is missing") for c in missing])


def _by_date(frame: pl.DataFrame) -> list[tuple[tuple[Any, ...], pl.DataFrame]]:
    dated = frame.sort(contract.SERVER, contract.TIMESTAMP).with_columns(
        pl.col(contract.TIMESTAMP).dt.convert_time_zone("UTC").dt.date().alias(PARTITION)
    )
    return list(dated.partition_by(PARTITION, as_dict=True, include_key=False).items())


def _write_files(files: list[tuple[Path, pl.DataFrame]]) -> None:
    for path, part in files:
        path.parent.mkdir(exist_ok=True)
        part.write_parquet(path, statistics=True)


def read_incidents(path: str | Path) -> pl.DataFrame:
    """Read the incidents' ground truth of a dataset folder, or an ``incidents.parquet`` file.

    Args:
        path: A folder written by :func:`write_parquet` or the parquet file itself.

    Returns:
        The table in :data:`workbench.simulator.GROUND_TRUTH_SCHEMA`, sorted by precursor start
        then server; empty (with that schema) when the folder has no ``incidents.parquet``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ContractError: when the file lacks ground-truth columns.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such data file or folder", str(path))
    file = path / INCIDENTS_FILE if path.is_dir() else path
    if not file.is_file():
        return pl.DataFrame(schema=GROUND_TRUTH_SCHEMA)
    return _ground_truth(pl.read_parquet(file), str(file)).sort("precursor_start", contract.SERVER)


def _ground_truth(table: pl.DataFrame, where: str) -> pl.DataFrame:
    missing = [c for c in GROUND_TRUTH_SCHEMA if c not in table.columns]
    if missing:
        error = ContractError([Issue(None, c, None, "required ground-truth column is missing") for c in missing])
        error.add_note(f"in {where}")
        raise error
    return table.select(list(GROUND_TRUTH_SCHEMA)).cast(pl.Schema(GROUND_TRUTH_SCHEMA))


def read_frame(path: str | Path) -> pl.DataFrame:
    """Read and validate a dataset folder from :func:`write_parquet`, a parquet file or a CSV file.

    Args:
        path: A folder (its ``metrics`` subfolder or the folder itself holds ``*.parquet``
            files, searched recursively), a ``.parquet`` file or a ``.csv`` file.

    Returns:
        A contract frame sorted by server name then timestamp (no partition column).

    Raises:
        FileNotFoundError: when ``path`` does not exist or a folder holds no parquet files.
        ContractError: naming row (within its file), field and value of each violation.
        ContractError: also when a file is neither parquet nor CSV.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such data file or folder", str(path))
    files = _parquet_files(path) if path.is_dir() else [path]
    frames = [_read_one(f) for f in files]
    return pl.concat(frames).sort(contract.SERVER, contract.TIMESTAMP)


def _parquet_files(folder: Path) -> list[Path]:
    root = folder / METRICS_DIR if (folder / METRICS_DIR).is_dir() else folder
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(errno.ENOENT, "folder holds no parquet files", str(root))
    return files


def _read_one(file: Path) -> pl.DataFrame:
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        raw = pl.read_parquet(file, hive_partitioning=False)
    elif suffix == ".csv":
        text_columns = (contract.SERVER, contract.PROFILE, contract.STATE)  # timestamps: ISO text or epoch s
        raw = pl.read_csv(file, schema_overrides=dict.fromkeys(text_columns, pl.String), infer_schema_length=10_000)
    else:
        raise ContractError([Issue(None, "path", str(file), "expected a .parquet or .csv file or a dataset folder")])
    try:
        return contract.validate(raw)
    except ContractError as error:
        error.add_note(f"in file {file}")
        raise


def fingerprint(frame: pl.DataFrame) -> str:
    """Return a short hash of a frame's content, independent of row order and stable across processes.

    Rows are put in canonical order (by server and timestamp when present, then every other
    column); each column contributes its name, type, null mask and values, so equal content
    gives an equal hash whatever the row order. Column order counts.

    Args:
        frame: Any polars frame, typically a contract frame.
    """
    keys = [c for c in (contract.SERVER, contract.TIMESTAMP) if c in frame.columns]
    canonical = frame.sort([*keys, *[c for c in frame.columns if c not in keys]], nulls_last=True)
    digest = hashlib.sha256(f"rows={canonical.height}".encode())
    for name, series in canonical.to_dict().items():
        digest.update(f"\x00{name}:{series.dtype}\x00".encode())
        digest.update(np.packbits(series.is_null().to_numpy()).tobytes())
        digest.update(_value_bytes(series))
    return digest.hexdigest()[:16]


def _value_bytes(series: pl.Series) -> bytes:
    """Return the values as bytes: text as sorted uniques plus codes, numbers little-endian."""
    if series.dtype.is_temporal():
        series = series.to_physical()
    if series.dtype.is_numeric() or series.dtype == pl.Boolean:
        values = series.fill_null(0).to_numpy()
        return values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
    text = series.cast(pl.String)
    uniques = text.drop_nulls().unique().sort()
    codes = text.cast(pl.Enum(uniques)).to_physical().cast(pl.Int64).fill_null(-1).to_numpy()
    return "\x00".join(uniques.to_list()).encode() + b"\x01" + codes.astype("<i8").tobytes()
