"""What a forecast says about an incident coming: features per server and alerting metric.

Every value is a *normalised distance to the critical level*, ``(x - critical) / (critical -
warning)`` (signs flipped where low is bad): 0 at the critical level, -1 at the warning level,
positive past critical. Distances make one scale for every metric and profile, so a single
calibrator serves a fleet whose levels differ per profile. The features of a (server, metric):

* ``current``: the last observed value;
* ``p50_<w>``, ``p90_<w>``: the largest median and upper band edge over the window ``w`` of the
  horizon (``30m``: steps 1–6, ``2h``: steps 7–24, ``8h``: steps 25–96), i.e. how close the
  forecast comes to the level and when;
* ``rise_1h``: the median one hour ahead less the current value (the forecast's slope);
* ``slope_1h``: the least-squares slope of the last hour of observations, per hour, and
  ``change_30m``: the current value less the value 30 minutes ago (what already happened; 0
  without that history);
* ``z_now`` and ``z_30m``: how unusual the current value and the mean of the last 30 minutes
  are for this server, in robust standard deviations of its own history before the last hour
  (``Forecast.baseline``; 0 without it). Distances to a level miss a precursor that is large
  for the server but small against the gap between warning and critical (latency doubling
  from 40 ms ahead of an error storm); deviations from the server's usual level see it.

Distances are clipped to ``[-CLIP_LOW, CLIP_HIGH]``: far below warning, how far no longer matters;
deviations to ``[-Z_CLIP, Z_CLIP]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from workbench import contract as c
from workbench.thresholds import Thresholds

if TYPE_CHECKING:  # the forecast module imports numba; features need only numpy
    from workbench.forecast import Forecast

WINDOWS: tuple[tuple[str, int, int], ...] = (("30m", 0, 6), ("2h", 6, 24), ("8h", 24, c.HORIZON_STEPS))
FEATURES: tuple[str, ...] = (
    "current",
    *(f"{q}_{name}" for name, _, _ in WINDOWS for q in ("p50", "p90")),
    "rise_1h",
    "slope_1h",
    "change_30m",
    "z_now",
    "z_30m",
)
CLIP_LOW, CLIP_HIGH = 8.0, 4.0
Z_CLIP = 12.0
SPREAD_FLOOR = 0.02  # smallest spread a deviation divides by, in distance units (2 % of warning→critical)
STEPS_1H = 3600 // c.STEP_SECONDS
STEPS_30M = STEPS_1H // 2


@dataclass(frozen=True, eq=False)
class WarningFeatures:
    """Features of every forecast server and metric.

    Attributes:
        servers: Forecast servers, in row order.
        metrics: Forecast metrics, in column order.
        values: ``(servers, metrics, len(FEATURES))`` features; NaN where the metric has no level.
        alerting: ``(servers, metrics)`` whether the metric has a critical level for the server.
    """

    servers: tuple[str, ...]
    metrics: tuple[str, ...]
    values: np.ndarray
    alerting: np.ndarray


def warning_features(forecast: Forecast, thresholds: Thresholds) -> WarningFeatures:
    """Return the features of every server and metric of ``forecast`` (see the module docstring).

    Args:
        forecast: Quantile forecasts of at least 96 steps (servers warming up have none).
        thresholds: Warning and critical levels per profile.
    """
    levels = thresholds.array(forecast.profiles, forecast.targets)  # (n, m, 2)
    warning, critical = levels[..., 0], levels[..., 1]
    sign = np.where(c.high_is_bad(forecast.targets), 1.0, -1.0)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = sign * (critical - warning)

        def distance(x: np.ndarray, extra: int = 0) -> np.ndarray:
            shape = (slice(None), slice(None)) + (None,) * extra
            return sign[shape] * (x - critical[shape]) / scale[shape]

        q = np.sort(forecast.quantiles, axis=-1)
        high = sign[..., None] > 0
        median = q[..., 1]
        edge = np.where(high, q[..., 2], q[..., 0])  # the band edge on the bad side
        columns = [distance(forecast.current)]
        for _, lo, hi in WINDOWS:
            columns.append(distance(median[:, :, lo:hi], 1).max(axis=-1))
            columns.append(distance(edge[:, :, lo:hi], 1).max(axis=-1))
        columns.append(distance(median[:, :, STEPS_1H - 1]) - columns[0])
        columns += _history(forecast, distance)
        values = np.clip(np.stack(columns, axis=-1), -CLIP_LOW, CLIP_HIGH)
        values = np.concatenate([values, _deviation(forecast, distance, np.abs(scale))], axis=-1)
    alerting = np.isfinite(critical) & (scale > 0)
    values[~alerting] = np.nan
    values[alerting] = np.nan_to_num(values[alerting], nan=-CLIP_LOW)  # a gap in the window reads as "far below"
    return WarningFeatures(tuple(forecast.servers), tuple(forecast.targets), values, alerting)


def _history(forecast: Forecast, distance: Callable[[np.ndarray, int], np.ndarray]) -> list[np.ndarray]:
    """Slope of the last hour (distance per hour) and the change over 30 minutes; 0 without history."""
    n, m = forecast.current.shape
    if forecast.recent is None:
        return [np.zeros((n, m)), np.zeros((n, m))]
    past = distance(np.swapaxes(forecast.recent, 1, 2), 1)  # (n, m, steps), oldest first
    steps = past.shape[-1]
    x = np.arange(steps) - (steps - 1) / 2
    slope = (past * x).sum(axis=-1) / (x**2).sum() * STEPS_1H
    change = past[..., -1] - past[..., -1 - min(STEPS_30M, steps - 1)]
    return [np.nan_to_num(slope, nan=0.0), np.nan_to_num(change, nan=0.0)]


def _deviation(forecast: Forecast, distance: Callable[[np.ndarray, int], np.ndarray], scale: np.ndarray) -> np.ndarray:
    """``(n, m, 2)``: the current value and the last 30 minutes' mean against the server's baseline."""
    n, m = forecast.current.shape
    if forecast.baseline is None:
        return np.zeros((n, m, 2))
    centre = distance(forecast.baseline[..., 0], 0)
    spread = np.maximum(forecast.baseline[..., 1] / scale, SPREAD_FLOOR)
    last = distance(forecast.current, 0)
    mean_30m = last
    if forecast.recent is not None:
        with warnings.catch_warnings():  # a server without the last 30 minutes keeps its current value
            warnings.simplefilter("ignore", RuntimeWarning)
            recent = np.nanmean(distance(np.swapaxes(forecast.recent[:, -STEPS_30M:], 1, 2), 1), axis=-1)
        mean_30m = np.where(np.isnan(recent), last, recent)
    z = np.stack([(last - centre) / spread, (mean_30m - centre) / spread], axis=-1)
    return np.clip(np.nan_to_num(z, nan=0.0, posinf=Z_CLIP, neginf=-Z_CLIP), -Z_CLIP, Z_CLIP)
