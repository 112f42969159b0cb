"""Timestamps of any source to UTC datetimes: epoch numbers by magnitude, ISO or given formats."""

from __future__ import annotations

import polars as pl

from workbench.errors import ConfigError

UTC_TIME = pl.Datetime("us", "UTC")
EPOCH_MICROS: dict[str, float] = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}
EPOCH_NAMES = {"s": "epoch seconds", "ms": "epoch milliseconds", "us": "epoch microseconds", "ns": "epoch nanoseconds"}


def epoch_unit(values: pl.Series) -> str:
    """Return the epoch unit (``s``, ``ms``, ``us`` or ``ns``) implied by the values' magnitude.

    Times between 1973 and 5138 read unambiguously: 1e11 seconds is year 5138 while 1e11
    milliseconds is 1973, and likewise for each further factor of 1000.
    """
    magnitude = values.cast(pl.Float64, strict=False).abs().median()
    if not isinstance(magnitude, int | float):
        return "s"
    for unit, limit in (("s", 1e11), ("ms", 1e14), ("us", 1e17)):
        if magnitude < limit:
            return unit
    return "ns"


def from_epoch(values: pl.Series, unit: str) -> pl.Series:
    """Return epoch numbers in ``unit`` as UTC datetimes; non-finite values become null."""
    micros = values.cast(pl.Float64, strict=False) * EPOCH_MICROS[unit]
    usable = micros.is_finite() & (micros.abs() < 1e17)
    return pl.select(pl.when(usable).then(micros).round().cast(pl.Int64).cast(UTC_TIME)).to_series().alias(values.name)


def parse_times(values: pl.Series, time_format: str | None = None) -> tuple[pl.Series, str]:
    """Return ``values`` as UTC datetimes and a description of how they were read.

    Args:
        values: Datetimes, epoch numbers, or text (ISO 8601, epoch numbers as text, or
            ``time_format``). Text without an offset is taken as UTC.
        time_format: ``s``, ``ms``, ``us`` or ``ns`` to force an epoch unit, a strftime format
            such as ``%d/%m/%Y %H:%M`` for text, or ``None`` to detect.

    Raises:
        ConfigError: when no value can be read as a time.
    """
    if isinstance(values.dtype, pl.Datetime):
        return _utc(values), "datetimes"
    if time_format in EPOCH_MICROS:
        return from_epoch(_numbers(values), time_format), f"{EPOCH_NAMES[time_format]} (given)"
    if values.dtype == pl.String:
        numbers = _numbers(values)
        if time_format is not None or numbers.null_count() > values.null_count() or numbers.null_count() == len(values):
            return _parse_text(values, time_format)
        values = numbers
    if values.dtype.is_numeric() and time_format is None:
        unit = epoch_unit(values)
        return from_epoch(values, unit), f"{EPOCH_NAMES[unit]} (detected by magnitude)"
    raise ConfigError(
        f"time column {values.name!r} holds {values.dtype} values; with --time-format {time_format!r} "
        "expected text (or an epoch unit: s, ms, us, ns)"
        if time_format
        else f"time column {values.name!r} has type {values.dtype}; expected datetimes, epoch numbers or text"
    )


def _numbers(values: pl.Series) -> pl.Series:
    if values.dtype == pl.String:
        return values.str.strip_chars().cast(pl.Float64, strict=False)
    return values.cast(pl.Float64, strict=False)


def _parse_text(values: pl.Series, time_format: str | None) -> tuple[pl.Series, str]:
    text = values.str.strip_chars()
    try:
        parsed = text.str.to_datetime(format=time_format, time_unit="us", strict=False)
    except pl.exceptions.PolarsError as error:
        raise _unreadable(values, time_format) from error
    if parsed.null_count() == parsed.len():
        raise _unreadable(values, time_format)
    how = f"text in format {time_format!r}" if time_format else "ISO 8601 text"
    if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone is None:
        how += " without offset, taken as UTC"
    return _utc(parsed), how


def _utc(values: pl.Series) -> pl.Series:
    dtype = values.dtype
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is None:
        values = values.dt.replace_time_zone("UTC")
    return values.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def _unreadable(values: pl.Series, time_format: str | None) -> ConfigError:
    first = values.drop_nulls().head(1).to_list()
    sample = repr(first[0]) if first else "no value"
    given = f" with format {time_format!r}" if time_format else ""
    return ConfigError(
        f"cannot read time column {values.name!r}{given} (first value {sample}); give a strftime format "
        "(e.g. --time-format '%d/%m/%Y %H:%M') or an epoch unit (s, ms, us, ns)"
    )
