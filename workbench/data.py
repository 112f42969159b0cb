"""Parquet IO for contract frames: hive-partitioned by UTC date, validated on the way in.

Layout written by :func:`write_parquet`::

    out_dir/
        contract.json
        metrics/date=2025-01-06/part-0.parquet
        metrics/date=2025-01-07/part-0.parquet
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from workbench import contract
from workbench.errors import ContractError, Issue

METRICS_DIR = "metrics"
CONTRACT_FILE = "contract.json"
PARTITION = "date"
PART_FILE = "part-0.parquet"


def write_parquet(frame: pl.DataFrame, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a contract frame as parquet partitioned by UTC date, with ``contract.json`` beside it.

    Args:
        frame: A contract frame (e.g. from :func:`workbench.simulator.generate` or :func:`read_frame`).
        out_dir: Dataset folder; created when missing.
        overwrite: Replace an existing ``metrics`` folder instead of refusing.

    Returns:
        ``out_dir``, which :func:`read_frame` accepts.

    Raises:
        ContractError: when contract columns are missing.
        FileExistsError: when ``out_dir`` already holds data and ``overwrite`` is false.
    """
    missing = [c for c in contract.COLUMNS if c not in frame.columns]
    if missing:
        raise ContractError([Issue(None, c, None, "required column is missing") for c in missing])
    out_dir = Path(out_dir)
    target = out_dir / METRICS_DIR
    if target.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "dataset already exists (pass overwrite=True to replace it)", str(target))
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".metrics-", dir=out_dir))
    try:
        _write_partitions(frame.select(contract.COLUMNS), staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (out_dir / CONTRACT_FILE).write_text(json.dumps(contract.contract_json(), indent=2) + "\n")
    return out_dir


def _write_partitions(frame: pl.DataFrame, folder: Path) -> None:
    dated = frame.sort(contract.SERVER, contract.TIMESTAMP).with_columns(
        pl.col(contract.TIMESTAMP).dt.convert_time_zone("UTC").dt.date().alias(PARTITION)
    )
    for (day,), part in dated.partition_by(PARTITION, as_dict=True, include_key=False).items():
        part_dir = folder / f"{PARTITION}={day:%Y-%m-%d}"
        part_dir.mkdir()
        part.write_parquet(part_dir / PART_FILE, statistics=True)


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
