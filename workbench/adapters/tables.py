"""Reading source tables: CSV (plain or gzip, any separator, also multi-character) and parquet."""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import polars as pl

from workbench import contract
from workbench.errors import ConfigError

SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz", ".parquet")
# Tried in this order; multi-character separators first so that ";\t" is not taken for ";".
SEPARATORS = (";\t", ",\t", ",", ";", "\t", "|")
_UNIT_SEPARATOR = "\x1f"
READ_ERRORS = (OSError, EOFError, ValueError, pl.exceptions.PolarsError)


def table_files(source: Path) -> list[Path]:
    """Return ``source`` itself, or the table files in a folder (recursively, sorted).

    Raises:
        FileNotFoundError: when ``source`` does not exist or a folder holds no table file.
    """
    if not source.exists():
        raise FileNotFoundError(2, "no such source file or folder", str(source))
    if source.is_file():
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))
    if not files:
        raise FileNotFoundError(2, f"folder holds no table file ({', '.join(SUFFIXES)})", str(source))
    return files


def stem(path: Path) -> str:
    """Return a file name without its table suffixes, e.g. ``12`` for ``12.csv.gz``."""
    name = path.name
    for suffix in (".gz", ".csv", ".tsv", ".txt", ".parquet"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def server_name_from(text: str) -> str:
    """Return ``text`` made into a contract-valid server name (other characters become ``-``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._:-]", "-", text)[:128]
    return cleaned or "server"


def unescape_separator(sep: str) -> str:
    r"""Return a separator given on a command line with escapes decoded (``;\t`` -> semicolon + tab)."""
    named = {"tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    return named.get(sep.lower(), sep.encode().decode("unicode_escape"))


def detect_separator(header: str) -> str:
    """Return the separator of a CSV header line: a known multi-character one, else the most frequent."""
    for sep in SEPARATORS:
        if len(sep) > 1 and sep in header:
            return sep
    counts = {sep: header.count(sep) for sep in SEPARATORS if len(sep) == 1}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


def read_table(path: Path, sep: str | None = None, dtype: pl.DataType | None = None) -> tuple[pl.DataFrame, str | None]:
    """Read a CSV (plain or gzip) or parquet file; return the frame and the separator used.

    Args:
        path: The file; gzip is recognised by its content, not its name.
        sep: Column separator, any length (e.g. semicolon + tab); ``None`` detects it from the header.
        dtype: Type of every CSV column; ``None`` reads text (cast later, so no guessing).

    Column names are stripped of surrounding spaces. Parquet gives ``None`` as separator.
    """
    if path.name.lower().endswith(".parquet"):
        return pl.read_parquet(path), None
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if sep is None:
        sep = detect_separator(data[: data.find(b"\n")].decode("utf-8", "replace"))
    if not sep:
        raise ConfigError("the separator must not be empty")
    single = sep
    if len(sep.encode()) > 1:
        data, single = data.replace(sep.encode(), _UNIT_SEPARATOR.encode()), _UNIT_SEPARATOR
    names = pl.read_csv(io.BytesIO(data), separator=single, n_rows=0).columns
    schema = {name: dtype or pl.String() for name in names}
    frame = pl.read_csv(io.BytesIO(data), separator=single, schema=schema)
    return frame.rename({c: c.strip() for c in frame.columns if c != c.strip()}), sep


def as_numbers(frame: pl.DataFrame, name: str) -> pl.Expr:
    """Return column ``name`` of ``frame`` as Float64; text is stripped first and non-numbers become null."""
    if frame.schema[name] == pl.String:
        return pl.col(name).str.strip_chars().cast(pl.Float64, strict=False)
    return pl.col(name).cast(pl.Float64, strict=False)


def available(frame: pl.DataFrame) -> str:
    """Return the frame's columns quoted and joined, for error messages."""
    return ", ".join(repr(c) for c in frame.columns)


def unknown_metric(name: str) -> ConfigError:
    """Return the error for a mapping to a column that is not a contract metric."""
    allowed = ", ".join(contract.METRIC_NAMES)
    return ConfigError(f"unknown contract column {name!r}; allowed: {allowed}")
