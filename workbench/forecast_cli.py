"""The ``workbench forecast`` command (registered in :mod:`workbench.cli`).

It reads the data and the bundle's manifest first and loads the model stack (torch and
pytorch-forecasting, the slow imports) only when some server can be forecast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from workbench import contract as c
from workbench.manifest import BundleManifest, read_manifest

if TYPE_CHECKING:
    import polars as pl

    from workbench.forecast import Forecast
    from workbench.inference.window import WindowStore

_PATH = click.Path(path_type=Path)


@click.command("forecast")
@click.option("--bundle", type=_PATH, required=True, help="Bundle folder written by `workbench train`.")
@click.option("--data", type=_PATH, required=True, help="Recent contract rows (parquet folder/file or CSV).")
@click.option("--server", "servers", multiple=True, help="Only these servers (repeatable; default: all).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
    help="table: a summary per server and metric; csv/parquet: every step; json: the REST shape.",
)
@click.option("--out", type=_PATH, help="Write to this file instead of stdout (needed for parquet).")
@click.option("--head", type=click.IntRange(min=1), help="Show at most this many table rows.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--reference",
    is_flag=True,
    help="Use pytorch-forecasting's own predict path instead of the engine's fast path (same numbers, slower).",
)
def forecast(
    bundle: Path,
    data: Path,
    servers: tuple[str, ...],
    fmt: str,
    out: Path | None,
    head: int | None,
    device: str,
    reference: bool,
) -> None:
    """Forecast the next 8 hours of every server in DATA with the model in BUNDLE.

    Each forecast starts one step after the server's last observation. The data and the
    bundle's JSON are checked before the model is loaded, and the model is not loaded at all
    when no server can be forecast. Servers with less history than the model needs (warming
    up) and servers without any value of a metric the model forecasts get no numbers: the
    table lists them after the forecast servers, with the history each has and still needs,
    and stderr names them. A fleet that is only warming up is a normal state (exit status 0);
    when no server can be forecast for another reason the command fails with exit status 2.
    """
    import polars as pl

    from workbench.data import read_frame
    from workbench.inference.window import WindowStore

    if fmt == "parquet" and out is None:
        raise click.BadParameter("parquet output needs --out FILE", param_hint="--format")
    frame = read_frame(data)
    if servers:
        unknown = sorted(set(servers) - set(frame[c.SERVER].unique().to_list()))
        if unknown:
            raise click.BadParameter(f"not in the data: {', '.join(unknown)}", param_hint="--server")
        frame = frame.filter(pl.col(c.SERVER).is_in(servers))
    shape = read_manifest(bundle)
    store = WindowStore(shape.max_encoder_length, shape.targets)  # as the engine holds them, with its gap rule
    store.ingest(frame)
    result = None if reference else _nothing_to_forecast(store, shape)
    if result is None:
        count = frame[c.SERVER].n_unique()
        of = f"{count:,} server{'s' if count != 1 else ''}"
        click.echo(f"read {frame.height:,} rows of {of} from {data}; loading {bundle} …", err=True)
        result = _model_forecast(bundle, device, reference, frame, store)
    for line in _forecast_notes(result, frame):
        click.echo(line, err=True)
    if not result.servers and (result.missing or not result.warming_up):
        raise _NothingForecast(
            f"no server could be forecast ({len(result.missing)} without metrics the model needs, "
            f"{len(result.warming_up)} warming up)"
        )
    if fmt == "json":
        emit(json.dumps({"predictions": result.to_json()}, indent=1), out)
    elif fmt == "csv":
        emit(result.to_frame().write_csv(), out)
    elif fmt == "parquet":
        assert out is not None
        result.to_frame().write_parquet(out)
        click.echo(f"wrote {out}", err=True)
    else:
        table = _forecast_table(result)
        rows = head or max(table.height, 1)
        with pl.Config(
            tbl_rows=rows, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True, fmt_str_lengths=120
        ):
            emit(str(table.head(head) if head else table), out)


class _NothingForecast(click.ClickException):
    exit_code = 2


def _nothing_to_forecast(store: WindowStore, shape: BundleManifest) -> Forecast | None:
    """Return the forecast, without numbers, of a fleet of which the model could forecast no server.

    A server is ready by the engine's rule: :meth:`WindowStore.histories` (its current run of
    history, restarted after a long gap) reaches the bundle's ``min_encoder_length``, and each
    target has a value in its window. Returns ``None`` when some server is ready (the model is
    needed); otherwise every server is warming up or lacks a target, and no model is loaded.
    """
    from workbench.forecast import Forecast

    readiness = store.readiness(None, shape.min_encoder_length, shape.max_encoder_length)
    if readiness.forecastable.any():
        return None
    targets, need = shape.targets, shape.min_encoder_length
    return Forecast.empty(targets, shape.horizon, need, readiness.warming_up, readiness.missing)


def _model_forecast(bundle: Path, device: str, reference: bool, frame: pl.DataFrame, store: WindowStore) -> Forecast:
    """Load the model (torch, Lightning, pytorch-forecasting: the slow part) and forecast ``frame``."""
    from workbench.inference.engine import Engine
    from workbench.inference.reference import reference_forecast
    from workbench.model import load_bundle

    model = load_bundle(bundle, device=None if device == "auto" else device)
    if reference:
        return reference_forecast(model, frame)
    return Engine(model).forecast(store=store)  # the windows already read for the warm-up check


def _forecast_table(result: Forecast) -> pl.DataFrame:
    """Return the table format: the forecast servers' summary, then one row per server not forecast.

    With servers not forecast, ``status`` replaces ``source`` and ``history`` and ``ready_in``
    say how far each warming-up server is; when no server was forecast, only those columns are left.
    """
    import polars as pl
    import polars.selectors as cs

    from workbench.forecast import SOURCE_MISSING, SOURCE_WARMING_UP

    summary = result.summary()
    forecast = summary.filter(~pl.col("source").is_in([SOURCE_WARMING_UP, SOURCE_MISSING]))
    need = result.min_history
    rows = [
        (server, "warming up", f"{have} of {need} steps", _steps_of(need - have))
        for server, have in sorted(result.warming_up.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    rows += [
        (server, "missing metrics", "", f"when it reports {', '.join(lacking)}")
        for server, lacking in sorted(result.missing.items())
    ]
    if not rows:
        return forecast
    waiting = pl.DataFrame(rows, schema=[c.SERVER, "status", "history", "ready_in"], orient="row")
    if not result.servers:
        return waiting
    forecast = forecast.drop("source").with_columns(pl.lit("forecast").alias("status"))
    table = pl.concat([forecast, waiting], how="diagonal")
    return table.select(c.SERVER, "status", pl.exclude(c.SERVER, "status")).with_columns(cs.string().fill_null(""))


def _steps_of(steps: int) -> str:
    """Return e.g. ``4 steps (20 min)``: a count of contract steps and how long they take."""
    seconds = steps * c.STEP_SECONDS
    hours, minutes = divmod(seconds // 60, 60)
    if seconds < 60:
        took = f"{seconds} s"
    elif not hours:
        took = f"{minutes} min"
    else:
        took = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{steps} step{'s' if steps != 1 else ''} ({took})"


def _forecast_notes(result: Forecast, frame: pl.DataFrame) -> list[str]:
    """Return one line per group of servers that were not forecast, and why; and the generic-profile note."""
    lines = []
    by_missing: dict[tuple[str, ...], list[str]] = {}
    for server, lacking in result.missing.items():
        by_missing.setdefault(tuple(lacking), []).append(server)
    for absent, names in by_missing.items():
        has = ",".join(t for t in result.targets if t not in absent)
        fix = f"workbench train --targets {has}" if has else "workbench train --targets on the metrics they have"
        lines.append(
            f"not forecast, no value of {', '.join(absent)} (needed by the model) in their history: {_names(names)}; "
            f"train a model on the metrics they have: {fix}"
        )
    if result.warming_up:
        have = [f"{s} has {n}" for s, n in sorted(result.warming_up.items(), key=lambda kv: (-kv[1], kv[0]))]
        lines.append(f"not forecast yet, warming up (the model needs {result.min_history} steps): {_names(have)}")
    generic = _generic_by_default(frame)
    if generic:
        prefixes = ", ".join(c.PROFILE_PREFIXES)
        lines.append(
            f"note: profile {c.DEFAULT_PROFILE} inferred, no name prefix ({prefixes}) matched: {_names(generic)}; "
            "a profile column in the data sets another"
        )
    return lines


def _generic_by_default(frame: pl.DataFrame) -> list[str]:
    """Return the servers on the generic profile whose names match no profile prefix."""
    import polars as pl

    lowered = pl.col(c.SERVER).str.to_lowercase()
    matched = pl.any_horizontal(*(lowered.str.starts_with(p) for p in c.PROFILE_PREFIXES))
    generic = frame.filter((pl.col(c.PROFILE) == c.DEFAULT_PROFILE) & ~matched)
    return sorted(generic[c.SERVER].unique().to_list())


def _names(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    count = f"{len(items)} server{'s' if len(items) != 1 else ''}"
    return f"{count} ({shown}{more})"


def emit(text: str, out: Path | None) -> None:
    """Write ``text`` to ``out``, or to stdout when ``out`` is None."""
    if out is None:
        click.echo(text, nl=not text.endswith("\n"))  # CSV text ends with its own newline
    else:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)
