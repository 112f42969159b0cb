"""The policies every adapter applies, in one place, each counted in an :class:`ImportReport`.

An adapter turns its source into *samples*: a polars frame with ``timestamp`` (UTC datetimes,
null where unreadable), ``server_name``, ``profile`` and the contract metrics it maps (Float64
in contract units; unmapped metrics are simply absent). :func:`conform` then, in this order:

1. drops samples without a valid time (null or outside the contract's years);
2. skips servers whose name breaks the contract's pattern;
3. drops identical samples (same server, time and values);
4. sets NaN/infinite values to null, and clips out-of-range values to the contract range
   (``clip=True``) or sets them to null (``clip=False``); no file or fleet is refused for them;
5. floors times to the 5-minute grid and combines the samples of one step by each metric's
   contract aggregation (mean or max, ignoring nulls);
6. skips servers without a single usable value, naming the reason;
7. trims each server's leading rows before its first step where every metric it has has a value
   (metrics a server never has are left null and listed; a server without such a step is skipped);
8. validates the result against the contract; rows come sorted by server then time.
"""

from __future__ import annotations

import polars as pl

from workbench import contract
from workbench.adapters.report import ImportReport, OutOfRange
from workbench.errors import ConfigError

T, S, P = contract.TIMESTAMP, contract.SERVER, contract.PROFILE
_STEP = f"{contract.STEP_SECONDS}s"


def conform(samples: pl.DataFrame, report: ImportReport, *, clip: bool = True) -> pl.DataFrame:
    """Apply every import policy to ``samples`` and return a contract-valid frame.

    Args:
        samples: Rows of ``timestamp``, ``server_name``, ``profile`` and mapped metrics.
        report: Filled in with the count of each policy (``rows_in`` included).
        clip: Clip out-of-range values to the contract range; else set them to null.

    Returns:
        A frame of :data:`workbench.contract.COLUMNS`, sorted by server then time.
    """
    metrics = [m for m in contract.METRIC_NAMES if m in samples.columns]
    if not metrics:
        raise ConfigError(f"no contract metric mapped; map at least one of {', '.join(contract.METRIC_NAMES)}")
    report.clip = clip
    report.rows_in += samples.height
    frame = samples.select(T, S, P, *[pl.col(m).cast(pl.Float64) for m in metrics])
    frame = _drop_bad_times(frame, report)
    frame = _skip_bad_names(frame, report)
    frame = _keyed(frame)
    frame = _drop_duplicates(frame, report)
    frame = _fix_ranges(frame, metrics, report, clip=clip)
    frame = _to_grid(frame, metrics, report)
    frame = _skip_empty(frame, metrics, report)
    frame = _trim_leading(frame, metrics, report)
    return _finish(frame, metrics, report)


def _drop_bad_times(frame: pl.DataFrame, report: ImportReport) -> pl.DataFrame:
    ok = pl.col(T).is_between(pl.lit(contract.TIMESTAMP_MIN), pl.lit(contract.TIMESTAMP_MAX), closed="left")
    flagged = frame.with_columns(ok.fill_null(False).alias("__ok"))
    kept = flagged.filter(pl.col("__ok")).drop("__ok")
    report.bad_timestamps += frame.height - kept.height
    if kept.height < frame.height:
        lost = flagged.group_by(S, maintain_order=True).agg(pl.col("__ok").any(), pl.len()).filter(~pl.col("__ok"))
        for name, n in lost.select(S, "len").iter_rows():
            report.skipped_servers[str(name)] = f"none of its {n:,} samples has a valid time"
    return kept


def _skip_bad_names(frame: pl.DataFrame, report: ImportReport) -> pl.DataFrame:
    names = frame.get_column(S).unique()
    bad = names.filter(~names.str.contains(f"^{contract.SERVER_NAME_PATTERN}$").fill_null(False))
    for name in bad.to_list():
        report.skipped_servers["(no name)" if name is None else name] = f"server name {contract.server_rule()}"
    return frame.filter(~pl.col(S).is_in(bad.implode(), nulls_equal=True)) if bad.len() else frame


def _keyed(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``__sid`` (server rank by name) and ``__key`` (server and grid step in one integer), sorted by key.

    Only rows sharing a key can be duplicates or need combining, so later steps touch those alone.
    """
    names = frame.get_column(S).unique().sort()
    sid = pl.col(S).cast(pl.Enum(names)).to_physical().cast(pl.Int64)
    step = pl.col(T).dt.epoch("s") // contract.STEP_SECONDS
    return (
        frame.with_columns(sid.alias("__sid"))
        .with_columns((pl.col("__sid") * 2**32 + step).alias("__key"))
        .sort("__key", maintain_order=True)
    )


def _drop_duplicates(frame: pl.DataFrame, report: ImportReport) -> pl.DataFrame:
    shared = frame.with_row_index("__row").filter(_shared_key())
    copies = shared.filter(~pl.struct(pl.exclude("__row")).is_first_distinct()).get_column("__row")
    report.duplicates += copies.len()
    if not copies.len():
        return frame
    return frame.with_row_index("__row").filter(~pl.col("__row").is_in(copies.implode())).drop("__row")


def _fix_ranges(frame: pl.DataFrame, metrics: list[str], report: ImportReport, *, clip: bool) -> pl.DataFrame:
    counts = frame.select(*[e for m in metrics for e in _range_counts(m)]).row(0, named=True)
    for m in metrics:
        found = OutOfRange(*(counts[f"{m}.{k}"] for k in ("above", "below", "non_finite", "max", "min")))
        if found.above or found.below or found.non_finite:
            report.out_of_range[m] = found
    return frame.with_columns(*[_fixed(m, clip) for m in metrics])


def _range_counts(name: str) -> list[pl.Expr]:
    metric = contract.METRIC_BY_NAME[name]
    value = pl.col(name)
    finite = value.filter(value.is_finite())
    high = pl.lit(float("inf") if metric.high is None else metric.high)
    return [
        (finite > high).sum().alias(f"{name}.above"),
        (finite < metric.low).sum().alias(f"{name}.below"),
        (~value.is_finite()).sum().alias(f"{name}.non_finite"),
        finite.filter(finite > high).max().alias(f"{name}.max"),
        finite.filter(finite < metric.low).min().alias(f"{name}.min"),
    ]


def _fixed(name: str, clip: bool) -> pl.Expr:
    metric = contract.METRIC_BY_NAME[name]
    value = pl.when(pl.col(name).is_finite()).then(pl.col(name))
    if clip:
        return value.clip(metric.low, metric.high).alias(name)
    inside = pl.col(name) >= metric.low
    if metric.high is not None:
        inside = inside & (pl.col(name) <= metric.high)
    return pl.when(inside).then(value).alias(name)


def _shared_key() -> pl.Expr:
    key = pl.col("__key")
    return ((key == key.shift(1)) | (key == key.shift(-1))).fill_null(False)


def _to_grid(frame: pl.DataFrame, metrics: list[str], report: ImportReport) -> pl.DataFrame:
    aggregations = [getattr(pl.col(m), contract.METRIC_BY_NAME[m].aggregation)() for m in metrics]
    frame = frame.with_columns(pl.col(T).dt.truncate(_STEP))
    shared = _shared_key()
    combined = (
        frame.filter(shared)
        .group_by("__key")
        .agg(pl.col(T, S, "__sid").first(), pl.col(P).last(), *aggregations)
        .select(frame.columns)
        .sort("__key")
    )
    single = frame.filter(~shared)
    report.combined += frame.height - single.height - combined.height
    return single.merge_sorted(combined, "__key")


def _skip_empty(frame: pl.DataFrame, metrics: list[str], report: ImportReport) -> pl.DataFrame:
    has_value = pl.any_horizontal(*[pl.col(m).is_not_null() for m in metrics])
    per_server = frame.group_by("__sid", maintain_order=True).agg(pl.col(S).first(), has_value.any().alias("any"))
    empty = per_server.filter(~pl.col("any")).get_column(S).to_list()
    for name in empty:
        report.skipped_servers[name] = f"no usable value of {', '.join(metrics)} (all missing or out of range)"
    return frame.filter(~pl.col(S).is_in(empty)) if empty else frame


def _trim_leading(frame: pl.DataFrame, metrics: list[str], report: ImportReport) -> pl.DataFrame:
    present = frame.group_by("__sid").agg(pl.col(S).first(), *[pl.col(m).is_not_null().any() for m in metrics])
    for m in metrics:
        lacking = present.filter(~pl.col(m)).get_column(S)
        if lacking.len():
            report.unmapped[m] = sorted(lacking.to_list())
    has = {m: pl.col("__sid").is_in(present.filter(pl.col(m)).get_column("__sid").implode()) for m in metrics}
    complete = pl.all_horizontal(*[pl.col(m).is_not_null() | ~has[m] for m in metrics])
    first = frame.filter(complete).group_by("__sid").agg(pl.col("__key").min())
    start = pl.col("__sid").replace_strict(first.get_column("__sid"), first.get_column("__key"), default=None)
    flagged = frame.with_columns((pl.col("__key") >= start).fill_null(False).alias("__keep"))
    lost = flagged.filter(~pl.col("__keep") & pl.col("__sid").is_in(first.get_column("__sid").implode()))["__sid"]
    report.trimmed_rows += lost.len()
    report.trimmed_servers += lost.n_unique()
    never = present.filter(~pl.col("__sid").is_in(first.get_column("__sid").implode()))
    for row in never.iter_rows(named=True):
        having = [m for m in metrics if row[m]]
        report.skipped_servers[row[S]] = f"no step where all of {', '.join(having)} have a value"
    return flagged.filter(pl.col("__keep")).drop("__keep")


def _finish(frame: pl.DataFrame, metrics: list[str], report: ImportReport) -> pl.DataFrame:
    result = contract.validate(frame.with_columns(pl.lit(None, dtype=pl.String).alias(contract.STATE)))
    report.rows_out = result.height
    report.servers_out = result.get_column(S).n_unique()
    if result.height:
        report.start, report.end = result.select(pl.col(T).min(), pl.col(T).max().alias("end")).row(0)
        span = (pl.col(T).max() - pl.col(T).min()).dt.total_seconds() // contract.STEP_SECONDS + 1
        report.missing_steps = int(result.group_by(S).agg((span - pl.len()).alias("gap")).get_column("gap").sum())
    report.nulls_out = {m: result.get_column(m).null_count() for m in metrics}
    return result
