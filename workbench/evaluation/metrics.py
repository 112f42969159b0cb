"""Forecast accuracy: pinball loss, MASE and p10–p90 coverage per metric and horizon step.

Definitions (``y`` actual, ``q_τ`` the forecast quantile at level τ, per server, metric, step):

* pinball loss at level τ: ``max(τ (y - q_τ), (τ - 1)(y - q_τ))``; ``pinball`` is its mean over
  the three levels 0.1, 0.5, 0.9, in the metric's unit;
* ``scale``: the in-sample MAE of the seasonal-naive rule (m=288), ``mean |y_t - y_{t-288}|``
  over the history the forecasters saw, per server and metric; a series whose scale is zero
  (constant a day apart) is left out of the scaled figures;
* ``mase``: ``|y - q_0.5| / scale`` and ``scaled_pinball``: ``pinball / scale`` (so that metrics of
  different units can be averaged);
* ``coverage``: the share of actual values with ``q_0.1 <= y <= q_0.9`` (target 0.8).

:class:`ScoreBoard` accumulates these over origins and servers and returns tidy polars frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.baselines import SEASON_STEPS

SCORE_COLUMNS = ("pinball", "scaled_pinball", "mase", "coverage")
_EPS = 1e-9


def pinball_loss(actual: np.ndarray, forecast: np.ndarray, level: float) -> np.ndarray:
    """Return the element-wise pinball (quantile) loss of ``forecast`` at ``level``.

    Args:
        actual: Observed values.
        forecast: Forecast quantile at ``level``, broadcastable to ``actual``.
        level: Quantile level in (0, 1).
    """
    diff = np.asarray(actual, dtype=np.float64) - np.asarray(forecast, dtype=np.float64)
    return np.maximum(level * diff, (level - 1.0) * diff)


def mean_pinball(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float] = c.QUANTILE_LEVELS) -> np.ndarray:
    """Return the pinball loss averaged over ``levels``; ``quantiles`` has the levels last."""
    losses = [pinball_loss(actual, quantiles[..., k], q) for k, q in enumerate(levels)]
    return np.mean(losses, axis=0)


def covered(actual: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Return 1.0 where ``p10 <= actual <= p90`` and 0.0 elsewhere (NaN where ``actual`` is NaN)."""
    inside = (quantiles[..., 0] <= actual) & (actual <= quantiles[..., 2])
    return np.where(np.isnan(actual), np.nan, inside.astype(np.float64))


def seasonal_scale(history: np.ndarray, season: int = SEASON_STEPS) -> np.ndarray:
    """Return the in-sample seasonal-naive MAE of each series, NaN when undefined or zero.

    Args:
        history: ``(servers, steps, metrics)`` values the forecasters saw.
        season: Seasonal lag in steps.

    Returns:
        ``(servers, metrics)`` scales.
    """
    if history.shape[1] <= season:
        return np.full((history.shape[0], history.shape[2]), np.nan)
    diff = np.abs(history[:, season:] - history[:, :-season])
    count = (~np.isnan(diff)).sum(axis=1)
    total = np.nansum(diff, axis=1)
    scale = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return np.where(scale > _EPS, scale, np.nan)


def score_arrays(actual: np.ndarray, quantiles: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Return each of :data:`SCORE_COLUMNS` per server, metric and step.

    Args:
        actual: ``(servers, metrics, horizon)`` observed values (NaN where unknown).
        quantiles: ``(servers, metrics, horizon, 3)`` p10/p50/p90 forecasts.
        scale: ``(servers, metrics)`` seasonal-naive in-sample MAE (NaN leaves scaled figures out).
    """
    pin = mean_pinball(actual, quantiles)
    s = scale[:, :, None]
    return {
        "pinball": pin,
        "scaled_pinball": pin / s,
        "mase": np.abs(actual - quantiles[..., 1]) / s,
        "coverage": covered(actual, quantiles),
    }


class ScoreBoard:
    """Sums of every score per model, metric and horizon step, over origins and servers."""

    def __init__(self, targets: Sequence[str], horizon: int) -> None:
        """Create an empty board for ``targets`` and ``horizon`` steps."""
        self.targets = tuple(targets)
        self.horizon = horizon
        self._sum: dict[str, dict[str, np.ndarray]] = {}
        self._count: dict[str, dict[str, np.ndarray]] = {}

    def add(self, model: str, actual: np.ndarray, quantiles: np.ndarray, scale: np.ndarray) -> None:
        """Add one origin's forecasts of some servers (see :func:`score_arrays` for the shapes)."""
        scores = score_arrays(actual, quantiles, scale)
        sums = self._sum.setdefault(model, {k: np.zeros((len(self.targets), self.horizon)) for k in SCORE_COLUMNS})
        counts = self._count.setdefault(model, {k: np.zeros((len(self.targets), self.horizon)) for k in SCORE_COLUMNS})
        for key, value in scores.items():
            sums[key] += np.nansum(value, axis=0)
            counts[key] += (~np.isnan(value)).sum(axis=0)

    def summary(self, by: str = "model") -> pl.DataFrame:
        """Return mean scores per model, or per model and ``metric`` or ``horizon_step``.

        Every value counts once, so each metric and step weighs by its number of values; raw
        ``pinball`` mixes units when averaged over metrics (use ``scaled_pinball`` there).
        """
        if by not in ("model", "metric", "horizon_step"):
            raise ValueError(f"by must be one of model, metric, horizon_step; got {by!r}")
        rows = []
        for model in self._sum:
            sums, counts = self._sum[model], self._count[model]
            labels: list[object]
            if by == "model":
                labels, reduce = [None], lambda a: a.sum(keepdims=True).reshape(1)
            elif by == "metric":
                labels, reduce = list(self.targets), lambda a: a.sum(axis=1)
            else:
                labels, reduce = list(range(1, self.horizon + 1)), lambda a: a.sum(axis=0)
            means = {k: reduce(sums[k]) / np.maximum(reduce(counts[k]), 1) for k in SCORE_COLUMNS}
            empty = {k: reduce(counts[k]) == 0 for k in SCORE_COLUMNS}
            n = reduce(counts["pinball"])
            for i, label in enumerate(labels):
                row: dict[str, object] = {"model": model} if by == "model" else {"model": model, by: label}
                row.update({k: None if empty[k][i] else float(means[k][i]) for k in SCORE_COLUMNS})
                row["n"] = int(n[i])
                rows.append(row)
        return pl.DataFrame(rows)

    @property
    def models(self) -> list[str]:
        """Models scored, in the order they were first added."""
        return list(self._sum)

    def frame(self) -> pl.DataFrame:
        """Return one row per (model, metric, horizon_step) with the mean scores and ``n`` values."""
        parts = []
        m, h = len(self.targets), self.horizon
        for model in self._sum:
            cols: dict[str, object] = {
                "model": [model] * (m * h),
                "metric": np.repeat(np.asarray(self.targets, dtype=object), h),
                "horizon_step": np.tile(np.arange(1, h + 1), m),
            }
            for key in SCORE_COLUMNS:
                count = self._count[model][key]
                cols[key] = np.where(count > 0, self._sum[model][key] / np.maximum(count, 1), np.nan).reshape(-1)
            cols["n"] = self._count[model]["pinball"].reshape(-1).astype(np.int64)
            parts.append(pl.DataFrame(cols))
        schema = {"model": pl.String, "metric": pl.String, "horizon_step": pl.Int64}
        if not parts:
            return pl.DataFrame(schema={**schema, **dict.fromkeys(SCORE_COLUMNS, pl.Float64), "n": pl.Int64})
        return pl.concat(parts).with_columns(pl.col("metric").cast(pl.String)).cast(schema)  # type: ignore[arg-type]
