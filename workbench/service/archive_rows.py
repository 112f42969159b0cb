"""The rows of the history archive: one fixed schema per table, and what a result adds to each.

Three tables, each keyed by ``timestamp`` (UTC, data time) and ``server_name``:

- ``metrics``: the records the daemon accepted, in the contract's columns;
- ``forecasts``: per server and target, the quantiles at a few steps ahead
  (:data:`~workbench.service.horizon_points.ARCHIVED_STEPS`); ``timestamp`` is the forecast's
  origin (the server's last observation) and ``target_time`` the time forecast;
- ``alerts``: transitions between consecutive published alert lists (``raised``, ``escalated``,
  ``deescalated``, ``resolved``); ``timestamp`` is the data time of the result that showed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.forecast import QUANTILE_NAMES
from workbench.service.horizon_points import HorizonPoints

KINDS = ("metrics", "forecasts", "alerts")
TRANSITIONS = ("raised", "escalated", "deescalated", "resolved")
_TIME = pl.Datetime("us", "UTC")
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "metrics": dict(c.SCHEMA),
    "forecasts": {
        c.TIMESTAMP: _TIME,
        c.SERVER: pl.String(),
        "metric": pl.String(),
        "step": pl.Int16(),
        "target_time": _TIME,
        **{name: pl.Float32() for name in QUANTILE_NAMES},
    },
    "alerts": {
        c.TIMESTAMP: _TIME,
        c.SERVER: pl.String(),
        "metric": pl.String(),
        "transition": pl.String(),
        "severity": pl.String(),
        "previous_severity": pl.String(),
        "predicted_value": pl.Float64(),
        "threshold": pl.Float64(),
        "minutes_ahead": pl.Int32(),
        "probability": pl.Float64(),
        "rule": pl.String(),
        "summary": pl.String(),
        "prediction_time": _TIME,
    },
}


def conform(kind: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Return ``frame`` in the table's columns and types (a column it lacks is null)."""
    schema = SCHEMAS[kind]
    if not frame.columns:
        return pl.DataFrame(schema=schema)
    return frame.select(
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in schema.items()
    )


def forecast_rows(points: HorizonPoints) -> pl.DataFrame:
    """Return one row per (server, target, step) of ``points``, quantiles as columns."""
    n, m, k = len(points.servers), len(points.targets), len(points.steps)
    origins = np.repeat(points.origin_times(), m * k)
    steps = np.tile(np.asarray(points.steps, dtype=np.int64), n * m)
    flat = points.values.reshape(n * m * k, len(points.levels))
    frame = pl.DataFrame(
        [
            pl.Series(c.TIMESTAMP, origins, dtype=pl.Int64).cast(_TIME),
            pl.Series(c.SERVER, np.repeat(np.asarray(points.servers, dtype=object), m * k), dtype=pl.String),
            pl.Series("metric", np.tile(np.repeat(np.asarray(points.targets, dtype=object), k), n), dtype=pl.String),
            pl.Series("step", steps, dtype=pl.Int16),
            pl.Series("target_time", origins + steps * c.STEP_SECONDS * 1_000_000, dtype=pl.Int64).cast(_TIME),
            *(pl.Series(name, flat[:, i], dtype=pl.Float32) for i, name in enumerate(points.quantile_names)),
        ]
    )
    return conform("forecasts", frame)


def alert_transitions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]], at: datetime, prediction: datetime
) -> pl.DataFrame:
    """Return what changed from one published alert list to the next, one row per alert.

    Args:
        previous: The alert dicts (:meth:`workbench.alerts.Alert.to_dict`) published before.
        current: The alert dicts published now.
        at: Data time of the current result (its ``metadata.data_time``).
        prediction: Wall-clock time of the current result.
    """
    before = {(a["server"], a["metric"]): a for a in previous}
    after = {(a["server"], a["metric"]): a for a in current}
    rows = []
    for key, alert in after.items():
        old = before.get(key)
        if old is None:
            rows.append(_row(alert, "raised", None, at, prediction))
        elif alert["severity"] != old["severity"]:
            rising = alert["severity"] == "critical"
            rows.append(_row(alert, "escalated" if rising else "deescalated", old["severity"], at, prediction))
    rows += [_row(alert, "resolved", alert["severity"], at, prediction) for key, alert in before.items()
             if key not in after]  # fmt: skip
    return pl.DataFrame(rows, schema=SCHEMAS["alerts"], orient="row")


def _row(alert: Mapping[str, Any], transition: str, previous: str | None, at: datetime, when: datetime) -> list[Any]:
    """One alert row; a resolved alert has no severity left (``previous_severity`` says which ended)."""
    return [
        at,
        alert["server"],
        alert["metric"],
        transition,
        None if transition == "resolved" else alert["severity"],
        previous,
        alert.get("predicted_value"),
        alert.get("threshold"),
        alert.get("minutes_ahead"),
        alert.get("probability"),
        alert.get("rule"),
        alert.get("summary"),
        when,
    ]


def new_origins(points: HorizonPoints, origins: dict[str, int]) -> HorizonPoints:
    """Keep the servers whose origin moved past ``origins`` (updated): a step forecast again is archived once.

    The predictor forecasts a step again when late data for it arrives, and a restarted daemon
    forecasts its last step again; the first forecast of each origin is the one kept.
    """
    keep = [i for i, (s, o) in enumerate(zip(points.servers, points.origin_steps.tolist(), strict=True))
            if o > origins.get(s, -1)]  # fmt: skip
    for i in keep:
        origins[points.servers[i]] = int(points.origin_steps[i])
    if len(origins) > 4 * len(points.servers) + 10_000:  # forget servers long gone
        current = set(points.servers)
        for server in [s for s in origins if s not in current]:
            del origins[server]
    return replace(points, servers=tuple(points.servers[i] for i in keep), origin_steps=points.origin_steps[keep],
                   values=points.values[keep])  # fmt: skip


def last_origins(forecasts: pl.DataFrame) -> dict[str, int]:
    """Return the newest origin step of each server in rows of the ``forecasts`` table."""
    newest = forecasts.group_by(c.SERVER).agg(pl.col(c.TIMESTAMP).max())
    steps = newest[c.TIMESTAMP].dt.epoch("s") // c.STEP_SECONDS
    return dict(zip(newest[c.SERVER].to_list(), steps.to_list(), strict=True))


def active_alerts(alerts: pl.DataFrame) -> list[dict[str, Any]]:
    """Return the alerts still active after the transitions in ``alerts`` (oldest first), as alert dicts."""
    last = alerts.group_by(c.SERVER, "metric", maintain_order=True).last()
    active = last.filter(pl.col("transition") != "resolved").drop(c.TIMESTAMP, "transition", "prediction_time")
    return [{"server": row.pop(c.SERVER), **row} for row in active.to_dicts()]


def write_table(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` as parquet or CSV, by ``path``'s suffix.

    Raises:
        ConfigError: for another suffix.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.write_parquet(path)
    elif suffix == ".csv":
        frame.write_csv(path)
    else:
        raise ConfigError(f"{path}: the export file must end in .parquet or .csv")
