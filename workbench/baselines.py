"""Baseline forecasters measured next to the TFT: seasonal naive, last value and ``predict_linear``.

Each baseline turns a :class:`Panel` (dense per-server history ending at one origin) into a
:class:`~workbench.forecast.Forecast` of the same shape as the engine's, with
``source`` set to the baseline's name. The p50 is the rule's point forecast; the p10 and p90
add the empirical 10 % and 90 % quantiles of the rule's own in-sample residuals, per server,
metric and horizon step, computed on the history the rule sees (the last ``residual_origins``
origins whose outcome is known). The band always contains the point forecast: a quantile on
the wrong side of zero (a biased rule) is replaced by zero. A step with fewer than
:data:`MIN_RESIDUALS` residuals uses the residuals of all steps pooled, and a zero-width band
when even those are too few.

Rules (``T`` is the last observed step, ``h = 1 … horizon``):

* ``seasonal_naive``: ``y[T + h - 288]`` (the same time yesterday; needs 288 steps of history);
* ``last_value``: ``y[T]``;
* ``daily_median``: the median of ``y[T - 287 … T]``, flat: the level of the last day without its
  shape (the bar a flat median forecast must clear; needs 288 steps);
* ``predict_linear``: Prometheus' ``predict_linear(v[1h], h * 300)``: the ordinary least-squares
  line through the last hour's 12 samples against their timestamps, evaluated ``h`` steps after
  the last sample (needs the 12 samples).

``mstl_ets`` (:class:`MstlEts`) is a fitted model rather than a rule: statsforecast's MSTL
(daily season of 288 steps, plus the weekly one of 2016 when a series has two weeks of
history) with an AutoETS forecast of its trend, fitted on each server and metric's last two
weeks in one ``StatsForecast.forecast`` call; its p10 and p90 are the ends of MSTL's own 80 %
prediction interval. It needs two days of history (two daily cycles for the STL).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.forecast import RECENT_STEPS, Forecast, history_baseline, postprocess

SEASON_STEPS = 288
LINEAR_WINDOW_STEPS = RECENT_STEPS  # predict_linear(v[1h], ...) sees one hour of samples
RESIDUAL_ORIGINS = 288
MIN_RESIDUALS = 10
WEEK_STEPS = 7 * SEASON_STEPS
MSTL_NAME = "mstl_ets"
MSTL_LEVEL = 80  # the central interval whose ends are the p10 and p90
# R's stl() defaults for the daily season (jumps of a tenth of each smoother's window): 10-20x faster
# than statsmodels' exact default of 1, and the seasonal shape differs by a fraction of the noise.
STL_KWARGS: dict[str, Any] = {"seasonal_jump": 2, "trend_jump": 51, "low_pass_jump": 29}
_BAND = (c.QUANTILE_LEVELS[0], c.QUANTILE_LEVELS[-1])  # the residual quantiles that make the p10 and p90

Rule = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Panel:
    """Dense history of some servers on the step grid, all ending at the same step.

    Attributes:
        servers: Server names, one per row.
        profiles: Their profiles.
        targets: Metrics, in column order.
        values: ``(servers, steps, targets)``; carried forward over gaps, NaN before a server's
            first observation.
        last_step: Global step index (epoch seconds / step) of the last column.
    """

    servers: list[str]
    profiles: list[str]
    targets: tuple[str, ...]
    values: np.ndarray
    last_step: int

    @property
    def lengths(self) -> np.ndarray:
        """Steps of history of each server (from its first observed step to the end)."""
        seen = ~np.isnan(self.values).all(axis=2)
        first = np.where(seen.any(axis=1), seen.argmax(axis=1), self.values.shape[1])
        return self.values.shape[1] - first

    def until(self, step: int, length: int | None = None) -> Panel:
        """Return the history up to global ``step`` (inclusive), at most ``length`` steps long."""
        end = self.values.shape[1] - (self.last_step - step)
        if not 0 < end <= self.values.shape[1]:
            raise ValueError(f"step {step} is outside the panel (last step {self.last_step})")
        start = 0 if length is None else max(0, end - length)
        return Panel(self.servers, self.profiles, self.targets, self.values[:, start:end], step)

    def select(self, servers: Sequence[str]) -> Panel:
        """Return the rows of ``servers`` (in that order)."""
        index = {s: i for i, s in enumerate(self.servers)}
        rows = [index[s] for s in servers]
        return Panel(list(servers), [self.profiles[i] for i in rows], self.targets, self.values[rows], self.last_step)


def panel_from_frame(frame: pl.DataFrame, targets: Sequence[str], *, fill: bool = True) -> Panel:
    """Lay a contract frame out as a dense :class:`Panel` over its whole time span.

    Args:
        frame: Validated contract rows (one row per server and step, e.g. :func:`workbench.contract.to_grid`).
        targets: Metrics to keep.
        fill: Carry the last value forward over missing steps and values (as the engine's
            windows do); without it, missing stays NaN (for scoring actual values).
    """
    targets = tuple(c.check_metric_names(list(targets)))
    steps = (frame[c.TIMESTAMP].dt.epoch("s") // c.STEP_SECONDS).to_numpy()
    first, last = int(steps.min()), int(steps.max())
    names = frame[c.SERVER].unique(maintain_order=True).sort().to_list()
    index = {s: i for i, s in enumerate(names)}
    rows = np.fromiter((index[s] for s in frame[c.SERVER].to_list()), dtype=np.int64, count=frame.height)
    values = np.full((len(names), last - first + 1, len(targets)), np.nan)
    values[rows, steps - first] = frame.select(targets).to_numpy().astype(np.float64)
    profiles = frame.group_by(c.SERVER).agg(pl.col(c.PROFILE).last())
    profile_of = dict(profiles.iter_rows())
    panel = Panel(names, [str(profile_of[s]) for s in names], targets, values, last)
    return Panel(names, panel.profiles, targets, forward_fill(values), last) if fill else panel


def forward_fill(values: np.ndarray) -> np.ndarray:
    """Carry the last non-NaN value forward along axis 1 of ``(servers, steps, metrics)``; leading NaN stays."""
    ok = ~np.isnan(values)
    idx = np.where(ok, np.arange(values.shape[1])[None, :, None], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    out = np.take_along_axis(values, idx, axis=1)
    out[~np.maximum.accumulate(ok, axis=1)] = np.nan
    return out


# --------------------------------------------------------------------------- point rules
# Each rule maps values (n, T, m) and origin indices ends (k,) to point paths (n, k, H, m),
# NaN where the rule lacks the history it needs.


def seasonal_naive_paths(values: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    """Return ``y[e + h - 288]`` for each origin index ``e`` and step ``h = 1 … horizon``."""
    idx = ends[:, None] + 1 + np.arange(horizon)[None, :] - SEASON_STEPS  # (k, H)
    return _gather(values, idx)


def last_value_paths(values: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    """Return ``y[e]`` repeated over the horizon for each origin index ``e``."""
    return np.repeat(_gather(values, ends[:, None]), horizon, axis=2)


def daily_median_paths(values: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    """Return the median of the day up to each origin index ``e``, flat over the horizon."""
    idx = ends[:, None] - (SEASON_STEPS - 1) + np.arange(SEASON_STEPS)[None, :]  # (k, 288)
    window = _gather(values, idx)  # (n, k, 288, m)
    median = nan_median(window, axis=2)
    median[np.isnan(window).any(axis=2)] = np.nan  # a rule without its whole day does not forecast
    return np.repeat(median[:, :, None, :], horizon, axis=2)


def nan_median(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` without its all-NaN warning (the result is NaN there), empty arrays included."""
    if values.size == 0:
        return np.full(np.delete(values.shape, axis), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def predict_linear_paths(values: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    """Return Prometheus' ``predict_linear(v[1h], h * step)`` for each origin index and step.

    The least-squares line is fitted on the last :data:`LINEAR_WINDOW_STEPS` samples against
    their times relative to the origin, then evaluated ``h`` steps past the origin.
    """
    intercept, slope = linear_fit(values, ends)
    ahead = (np.arange(1, horizon + 1) * float(c.STEP_SECONDS))[None, None, :, None]
    return intercept[:, :, None, :] + slope[:, :, None, :] * ahead


def linear_fit(values: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(intercept, slope)``, each ``(servers, origins, metrics)``, of ``predict_linear``'s line.

    The line is fitted by ordinary least squares on the :data:`LINEAR_WINDOW_STEPS` samples
    ending at each origin index in ``ends``; the intercept is its value at the origin's time
    and the slope is per second. NaN where the window reaches before the first step.
    """
    n = LINEAR_WINDOW_STEPS
    x = (np.arange(n) - (n - 1)) * float(c.STEP_SECONDS)  # seconds before the last sample
    y = _gather(values, ends[:, None] - (n - 1) + np.arange(n)[None, :])  # (n_srv, k, n, m)
    xc = x - x.mean()
    slope = np.einsum("w,skwm->skm", xc, y) / (xc**2).sum()
    intercept = y.mean(axis=2) - slope * x.mean()
    return intercept, slope


def _gather(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Return ``values[:, idx]`` with NaN where ``idx`` falls before the first step."""
    out = values[:, np.clip(idx, 0, values.shape[1] - 1)]
    out[:, idx < 0] = np.nan
    return out


# --------------------------------------------------------------------------- quantile forecasts


@dataclass(frozen=True)
class Baseline:
    """A named point rule with the history it needs.

    Attributes:
        name: The ``source`` of its forecasts.
        rule: Point paths from values and origin indices.
        min_history: Steps a server needs before the rule forecasts it.
    """

    name: str
    rule: Rule
    min_history: int

    def forecast(
        self, panel: Panel, horizon: int = c.HORIZON_STEPS, *, residual_origins: int = RESIDUAL_ORIGINS
    ) -> Forecast:
        """Forecast every server of ``panel`` with enough history from its last step.

        Args:
            panel: History ending at the forecast origin.
            horizon: Steps ahead.
            residual_origins: Most recent origins whose in-sample residuals give the band.
        """
        return rule_forecast(panel, self, horizon, residual_origins=residual_origins)


class Forecaster(Protocol):
    """What a backtest needs of a baseline: its name, its warm-up and a forecast from a panel."""

    @property
    def name(self) -> str:
        """The ``source`` of its forecasts."""
        ...

    @property
    def min_history(self) -> int:
        """Steps a server needs before it is forecast."""
        ...

    def forecast(self, panel: Panel, horizon: int = ..., *, residual_origins: int = ...) -> Forecast:
        """Forecast every server of ``panel`` with enough history from its last step."""
        ...


@dataclass(frozen=True)
class MstlEts:
    """MSTL (daily, and weekly from two weeks of history) with an AutoETS trend, per server and metric.

    Attributes:
        name: The ``source`` of its forecasts.
        min_history: Steps a server needs: two daily cycles, the least the STL decomposes.
        history_steps: Most recent steps each series is fitted on (two weeks: the weekly season
            needs them, and a longer fit only costs time).
        ets_model: AutoETS model string of the trend forecaster (``ZZN``: error and trend
            chosen by AICc, no seasonality, which MSTL has taken out).
    """

    name: str = MSTL_NAME
    min_history: int = 2 * SEASON_STEPS
    history_steps: int = 2 * WEEK_STEPS
    ets_model: str = "ZZN"

    def forecast(
        self, panel: Panel, horizon: int = c.HORIZON_STEPS, *, residual_origins: int = RESIDUAL_ORIGINS
    ) -> Forecast:
        """Forecast every server of ``panel`` with enough history from its last step.

        Args:
            panel: History ending at the forecast origin.
            horizon: Steps ahead.
            residual_origins: Unused: the band is the model's own 80 % interval.
        """
        lengths = panel.lengths
        ready = lengths >= self.min_history
        values = panel.values[ready][:, -self.history_steps :]
        quantiles = mstl_quantiles(values, horizon, self)
        return packaged_forecast(panel, ready, values, quantiles, self.min_history, self.name)


BASELINES: dict[str, Forecaster] = {
    "seasonal_naive": Baseline("seasonal_naive", seasonal_naive_paths, SEASON_STEPS),
    "last_value": Baseline("last_value", last_value_paths, 1),
    "daily_median": Baseline("daily_median", daily_median_paths, SEASON_STEPS),
    "predict_linear": Baseline("predict_linear", predict_linear_paths, LINEAR_WINDOW_STEPS),
    MSTL_NAME: MstlEts(),
}
DEFAULT_BASELINES: tuple[str, ...] = ("seasonal_naive", "last_value", "predict_linear")  # the cheap rules


PARALLEL_MSTL_SERIES = 32


def mstl_seasons(length: int) -> tuple[int, ...]:
    """Return the seasons MSTL fits on ``length`` steps: daily, and weekly from two weeks on."""
    return (SEASON_STEPS, WEEK_STEPS) if length >= 2 * WEEK_STEPS else (SEASON_STEPS,)


def mstl_quantiles(values: np.ndarray, horizon: int, model: MstlEts) -> np.ndarray:
    """Return ``(servers, metrics, horizon, 3)`` MSTL + AutoETS p10/p50/p90, NaN for series too short.

    Every series with at least ``model.min_history`` values is fitted; series sharing a set of
    seasons (:func:`mstl_seasons`) go through one ``StatsForecast.forecast`` call.

    Args:
        values: ``(servers, steps, metrics)`` history, NaN only before a series' first value.
        horizon: Steps ahead.
        model: The baseline's settings.
    """
    n, t, m = values.shape
    series = values.transpose(0, 2, 1).reshape(n * m, t)
    counts = (~np.isnan(series)).sum(axis=1)
    out = np.full((n * m, horizon, 3), np.nan)
    seasons = [mstl_seasons(int(k)) if k >= model.min_history else None for k in counts]
    for group in sorted({g for g in seasons if g is not None}):
        rows = np.array([i for i, g in enumerate(seasons) if g == group])
        out[rows] = _statsforecast_mstl(series[rows], horizon, group, model)
    return out.reshape(n, m, horizon, 3)


def _statsforecast_mstl(series: np.ndarray, horizon: int, seasons: tuple[int, ...], model: MstlEts) -> np.ndarray:
    """Fit MSTL + AutoETS on each row of ``series`` (leading NaN skipped) and return ``(rows, horizon, 3)``."""
    import pandas as pd  # here, not at the top: the daemon imports this module for linear_fit
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS

    rows, steps = np.nonzero(~np.isnan(series))
    frame = pd.DataFrame({"unique_id": rows, "ds": steps, "y": series[rows, steps]})
    mstl = MSTL(
        season_length=list(seasons),
        trend_forecaster=AutoETS(model=model.ets_model),
        stl_kwargs=STL_KWARGS,
        alias=model.name,
    )
    jobs = -1 if len(series) >= PARALLEL_MSTL_SERIES else 1  # a process pool pays off from a few dozen series
    out = StatsForecast(models=[mstl], freq=1, n_jobs=jobs).forecast(df=frame, h=horizon, level=[MSTL_LEVEL])
    assert isinstance(out, pd.DataFrame)  # a pandas frame in gives a pandas frame out
    out = out.sort_values(["unique_id", "ds"], kind="stable")
    columns = [f"{model.name}-lo-{MSTL_LEVEL}", model.name, f"{model.name}-hi-{MSTL_LEVEL}"]
    return out[columns].to_numpy(np.float64).reshape(len(series), horizon, 3)


def seasonal_naive(
    panel: Panel, horizon: int = c.HORIZON_STEPS, *, residual_origins: int = RESIDUAL_ORIGINS
) -> Forecast:
    """Return the seasonal-naive (m=288) forecast of ``panel`` with residual-quantile bands."""
    return BASELINES["seasonal_naive"].forecast(panel, horizon, residual_origins=residual_origins)


def last_value(panel: Panel, horizon: int = c.HORIZON_STEPS, *, residual_origins: int = RESIDUAL_ORIGINS) -> Forecast:
    """Return the last-value forecast of ``panel`` with residual-quantile bands."""
    return BASELINES["last_value"].forecast(panel, horizon, residual_origins=residual_origins)


def predict_linear(
    panel: Panel, horizon: int = c.HORIZON_STEPS, *, residual_origins: int = RESIDUAL_ORIGINS
) -> Forecast:
    """Return Prometheus' ``predict_linear`` over the last hour, with residual-quantile bands."""
    return BASELINES["predict_linear"].forecast(panel, horizon, residual_origins=residual_origins)


def rule_forecast(panel: Panel, baseline: Baseline, horizon: int, *, residual_origins: int) -> Forecast:
    """Return ``baseline``'s p10/p50/p90 forecast from the end of ``panel`` (see the module docstring)."""
    lengths = panel.lengths
    ready = lengths >= baseline.min_history
    values = panel.values[ready]
    t = values.shape[1]
    point = baseline.rule(values, np.array([t - 1]), horizon)[:, 0]  # (n, H, m)
    band = residual_band(values, baseline.rule, horizon, residual_origins)  # (n, H, m, 2)
    quantiles = np.stack([point + band[..., 0], point, point + band[..., 1]], axis=-1).transpose(0, 2, 1, 3)
    return packaged_forecast(panel, ready, values, quantiles, baseline.min_history, baseline.name)


def packaged_forecast(
    panel: Panel, ready: np.ndarray, values: np.ndarray, quantiles: np.ndarray, min_history: int, source: str
) -> Forecast:
    """Return the :class:`Forecast` of the ``ready`` servers' quantiles; the others are warming up.

    Args:
        panel: The history the baseline saw.
        ready: ``(servers,)`` which servers of ``panel`` had enough history.
        values: ``(ready servers, steps, metrics)`` the history of the ready ones.
        quantiles: ``(ready servers, metrics, horizon, 3)``; a NaN marks a metric the baseline could
            not forecast, and its server is listed as missing that metric.
        min_history: Steps a server needs.
        source: The baseline's name.
    """
    lengths = panel.lengths
    t = values.shape[1]
    names = [s for s, r in zip(panel.servers, ready, strict=True) if r]
    ready_profiles = [p for p, r in zip(panel.profiles, ready, strict=True) if r]
    absent = np.isnan(quantiles).any(axis=(2, 3))  # (n, m): a metric without any value
    keep = ~absent.any(axis=1)
    return Forecast(
        servers=[s for s, k in zip(names, keep, strict=True) if k],
        profiles=[p for p, k in zip(ready_profiles, keep, strict=True) if k],
        targets=panel.targets,
        last_step=np.full(int(keep.sum()), panel.last_step, dtype=np.int64),
        quantiles=postprocess(quantiles[keep], panel.targets),
        current=values[keep, -1].astype(np.float64),
        warming_up={s: int(n) for s, n, r in zip(panel.servers, lengths, ready, strict=True) if not r},
        missing={
            s: [m for m, a in zip(panel.targets, row, strict=True) if a]
            for s, row, k in zip(names, absent, keep, strict=True)
            if not k
        },
        min_history=min_history,
        source=source,
        recent=values[keep, -RECENT_STEPS:].astype(np.float64),
        baseline=history_baseline(values[keep], np.full(int(keep.sum()), t)),
    )


def residual_band(values: np.ndarray, rule: Rule, horizon: int, origins: int) -> np.ndarray:
    """Return ``(servers, horizon, metrics, 2)`` offsets of the p10 and p90 from the point forecast.

    Residuals ``actual - forecast`` of the rule at the last ``origins`` origins with a known
    outcome for each step; computed one metric at a time to bound memory.
    """
    n, t, m = values.shape
    first = max(0, t - 1 - (origins + horizon - 1))
    ends = np.arange(first, t - 1)
    out = np.zeros((n, horizon, m, 2))
    if len(ends) == 0 or n == 0:  # no origin with a known outcome, or no server ready
        return out
    target = ends[:, None] + 1 + np.arange(horizon)[None, :]  # (k, H)
    known = target <= t - 1
    for j in range(m):
        col = values[..., j : j + 1]
        resid = col[:, np.minimum(target, t - 1), 0] - rule(col, ends, horizon)[..., 0]  # (n, k, H)
        resid[:, ~known] = np.nan
        out[:, :, j] = _band(resid)
    return out


def _band(resid: np.ndarray) -> np.ndarray:
    """Return ``(n, H, 2)`` p10/p90 offsets from residuals ``(n, k, H)``, pooled where a step has too few."""
    per_step = nan_quantiles(resid, _BAND, axis=1)  # (2, n, H)
    count = (~np.isnan(resid)).sum(axis=1)  # (n, H)
    n, k, h = resid.shape
    pooled = nan_quantiles(resid.reshape(n, k * h), _BAND, axis=1)  # (2, n)
    pooled_ok = (~np.isnan(resid)).reshape(n, -1).sum(axis=1) >= MIN_RESIDUALS
    pooled = np.where(pooled_ok[None, :], pooled, 0.0)
    chosen = np.where(count[None] >= MIN_RESIDUALS, per_step, pooled[:, :, None])
    chosen = np.nan_to_num(chosen, nan=0.0)
    return np.stack([np.minimum(chosen[0], 0.0), np.maximum(chosen[1], 0.0)], axis=-1)


def nan_quantiles(x: np.ndarray, levels: Sequence[float], axis: int) -> np.ndarray:
    """Return the linear-interpolation quantiles of ``x`` along ``axis``, ignoring NaN (vectorised).

    Same values as ``np.nanquantile`` (default method) without its per-slice Python loop.
    The result has the quantile levels first; a slice without values gives NaN.
    """
    s = np.moveaxis(np.sort(x, axis=axis), axis, -1)  # NaN sort last
    count = (~np.isnan(s)).sum(axis=-1)
    out = []
    for q in levels:
        pos = q * np.maximum(count - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
        a = np.take_along_axis(s, lo[..., None], axis=-1)[..., 0]
        b = np.take_along_axis(s, hi[..., None], axis=-1)[..., 0]
        value = a + (pos - lo) * (b - a)
        out.append(np.where(count > 0, value, np.nan))
    return np.stack(out)


def step_of(moment: datetime) -> int:
    """Return the global step index of a UTC time (epoch seconds / step, floored)."""
    return int(moment.timestamp()) // c.STEP_SECONDS
