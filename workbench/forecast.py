"""The fleet forecast: quantile arrays with their servers, targets and origins (no torch).

A :class:`Forecast` always says where its numbers came from: ``source="tft"`` for servers the
model forecast, and servers without enough history are listed as ``warming_up`` with no
numbers at all, never a made-up forecast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import polars.selectors as cs

from workbench import contract as c
from workbench.inference.lazy_jit import lazy_njit

QUANTILE_NAMES = tuple(f"p{round(100 * q)}" for q in c.QUANTILE_LEVELS)  # p10, p50, p90
SOURCE_TFT = "tft"
SOURCE_WARMING_UP = "warming_up"
SOURCE_MISSING = "missing_metrics"
RECENT_STEPS = 3600 // c.STEP_SECONDS  # the last hour a forecast carries: what predict_linear(v[1h]) reads
MAD_TO_SD = 1.4826  # median absolute deviation to the standard deviation of a normal sample


def history_baseline(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return ``(servers, metrics, 2)`` median and robust spread of the history before the last hour.

    Servers are taken by equal usable length, so each group is one plain ``np.median`` over a
    full slice (``nanmedian`` over a padded array costs ~0.3 s per 1,000 servers on the
    forecast path). A metric with no value in a window is NaN throughout, and so is its result.

    Args:
        values: ``(servers, steps, metrics)`` left-aligned histories (rows past ``lengths`` ignored).
        lengths: Steps of history of each server.
    """
    n, _, m = values.shape
    usable = np.asarray(lengths) - RECENT_STEPS
    out = np.full((n, m, 2), np.nan)
    for length in np.unique(usable[usable > 0]):
        rows = np.flatnonzero(usable == length)
        past = values[rows, :length]
        median = np.median(past, axis=1)
        spread = MAD_TO_SD * np.median(np.abs(past - median[:, None, :]), axis=1)
        out[rows] = np.stack([median, spread], axis=-1)
    return out


@dataclass
class Forecast:
    """Quantile forecasts for a fleet.

    Attributes:
        servers: Forecast servers, in row order of the arrays.
        profiles: Profile of each forecast server.
        targets: Forecast metrics, in column order of the arrays.
        last_step: Global step index of each server's last observation (the forecast origin).
        quantiles: ``(servers, targets, horizon, 3)`` p10/p50/p90, clipped to contract ranges.
        current: ``(servers, targets)`` last observed values.
        warming_up: Servers without enough history, with the steps they have.
        missing: Servers with enough history but no value at all for some targets in their window.
        min_history: Steps a server needs before it is forecast.
        source: Where the numbers come from.
        recent: ``(servers, 12, targets)`` the last hour of observed values, oldest first (NaN
            before a server's first step); the ``predict_linear`` alert rule reads it.
        baseline: ``(servers, targets, 2)`` the median and robust spread (1.4826 × MAD) of each
            server's values before that last hour: its usual level, against which the early-warning
            features measure how unusual the last hour is (NaN without such history).
        levels: The probabilities of the three quantiles (the model's; p10, p50, p90 by default).
    """

    servers: list[str]
    profiles: list[str]
    targets: tuple[str, ...]
    last_step: np.ndarray
    quantiles: np.ndarray
    current: np.ndarray
    warming_up: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    min_history: int = 0
    source: str = SOURCE_TFT
    recent: np.ndarray | None = None
    levels: tuple[float, ...] = c.QUANTILE_LEVELS
    baseline: np.ndarray | None = None

    @classmethod
    def empty(
        cls,
        targets: tuple[str, ...],
        horizon: int,
        min_history: int,
        warming_up: dict[str, int],
        missing: dict[str, list[str]] | None = None,
    ) -> Forecast:
        """Return the forecast of a fleet of which no server could be forecast (no numbers)."""
        m = len(targets)
        return cls(
            servers=[],
            profiles=[],
            targets=targets,
            last_step=np.zeros(0, dtype=np.int64),
            quantiles=np.zeros((0, m, horizon, 3)),
            current=np.zeros((0, m)),
            warming_up=warming_up,
            missing=missing or {},
            min_history=min_history,
        )

    @property
    def horizon(self) -> int:
        """Steps ahead."""
        return int(self.quantiles.shape[2])

    def trend(self) -> np.ndarray:
        """Return the least-squares slope of each p50 path, in metric units per hour."""
        p50 = self.quantiles[..., 1]
        hours = np.arange(self.horizon) * c.STEP_SECONDS / 3600
        centred = hours - hours.mean()
        return (p50 * centred).sum(axis=-1) / (centred**2).sum()

    def timestamps(self, server_index: int) -> list[datetime]:
        """Return the UTC times of the forecast steps of one server."""
        first = int(self.last_step[server_index]) + 1
        return [datetime.fromtimestamp((first + h) * c.STEP_SECONDS, UTC) for h in range(self.horizon)]

    def to_frame(self) -> pl.DataFrame:
        """Return one row per (server, metric, step) with timestamp and p10/p50/p90.

        The columns keep their types when no server was forecast (an empty frame, not an untyped one).
        """
        n, m, h = self.quantiles.shape[:3]
        steps = np.arange(1, h + 1, dtype=np.int64)
        ts = (np.asarray(self.last_step, dtype=np.int64)[:, None] + steps[None, :]) * c.STEP_SECONDS  # (n, h) epoch s
        return pl.DataFrame(
            [
                _names(c.SERVER, self.servers, np.repeat(np.arange(n), m * h)),
                _names("metric", self.targets, np.tile(np.repeat(np.arange(m), h), n)),
                pl.Series("step", np.tile(steps, n * m), dtype=pl.Int64),
                pl.Series(c.TIMESTAMP, np.repeat(ts, m, axis=0).reshape(-1) * 1_000_000, dtype=pl.Int64).cast(
                    pl.Datetime("us", "UTC")
                ),
                *(
                    pl.Series(q, self.quantiles[..., i].reshape(-1), dtype=pl.Float64)
                    for i, q in enumerate(QUANTILE_NAMES)
                ),
            ]
        )

    def summary(self, steps: tuple[int, ...] = (6, 12, 48, 96)) -> pl.DataFrame:
        """Return one row per (server, metric): current, p50 at a few lead times, the 8 h band, trend.

        Forecast servers come first. Servers still warming up, then servers lacking a metric, get
        rows with ``source="warming_up"`` or ``source="missing_metrics"`` and no numbers. The
        columns keep their types when no server was forecast.
        """
        steps = tuple(s for s in steps if s <= self.horizon)
        n, m = len(self.servers), len(self.targets)
        last = self.horizon - 1
        numbers = {
            "current": self.current,
            **{f"p50_{_lead(s)}": self.quantiles[:, :, s - 1, 1] for s in steps},
            f"p10_{_lead(self.horizon)}": self.quantiles[:, :, last, 0],
            f"p90_{_lead(self.horizon)}": self.quantiles[:, :, last, 2],
            "trend_per_h": self.trend(),
        }
        table = pl.DataFrame(
            [
                _names(c.SERVER, self.servers, np.repeat(np.arange(n), m)),
                _names("metric", self.targets, np.tile(np.arange(m), n)),
                *(
                    pl.Series(name, np.asarray(v, dtype=np.float64).reshape(-1), dtype=pl.Float64)
                    for name, v in numbers.items()
                ),
                pl.Series("source", [self.source] * (n * m), dtype=pl.String),
            ]
        )
        others = [(s, SOURCE_WARMING_UP) for s in self.warming_up] + [(s, SOURCE_MISSING) for s in self.missing]
        if others:
            waiting = pl.DataFrame(
                {
                    c.SERVER: [s for s, _ in others for _ in self.targets],
                    "metric": list(self.targets) * len(others),
                    "source": [kind for _, kind in others for _ in self.targets],
                },
                schema={c.SERVER: pl.String, "metric": pl.String, "source": pl.String},
            )
            table = pl.concat([table, waiting], how="diagonal")
        return table.with_columns(cs.float().round(3))

    def to_json(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Return ``{server: {metric: {p10, p50, p90, current, trend, source}}}`` (the REST shape)."""
        trend = self.trend()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for i, server in enumerate(self.servers):
            out[server] = {
                metric: {
                    **{q: self.quantiles[i, j, :, k].round(4).tolist() for k, q in enumerate(QUANTILE_NAMES)},
                    "current": float(self.current[i, j]),
                    "trend": round(float(trend[i, j]), 6),
                    "source": self.source,
                }
                for j, metric in enumerate(self.targets)
            }
        for server, steps in self.warming_up.items():
            out[server] = {
                metric: {"source": SOURCE_WARMING_UP, "history_steps": steps, "needed_steps": self.min_history}
                for metric in self.targets
            }
        for server, metrics in self.missing.items():
            out[server] = {metric: {"source": SOURCE_MISSING, "missing": metrics} for metric in self.targets}
        return out


def postprocess(raw: np.ndarray, targets: tuple[str, ...]) -> np.ndarray:
    """Clip ``(servers, targets, horizon, 3)`` quantiles to contract ranges and order them.

    Quantile regression heads can cross; sorting the three values restores p10 <= p50 <= p90
    and leaves ordered outputs unchanged.

    Raises:
        ValueError: when the network produced a non-finite value (never hidden by a fallback).
    """
    raw = np.ascontiguousarray(raw)
    if raw.ndim != 4 or raw.shape[1] != len(targets) or raw.shape[3] != 3:
        raise ValueError(f"expected (servers, {len(targets)}, horizon, 3) quantiles, got {raw.shape}")
    metrics = [c.METRIC_BY_NAME[name] for name in targets]
    low = np.array([m.low for m in metrics], dtype=np.float64)
    high = np.array([np.inf if m.high is None else m.high for m in metrics], dtype=np.float64)
    out = np.empty(raw.shape, dtype=np.float64)
    if not _clip_and_order(raw, low, high, out):
        bad = sorted({targets[j] for j in np.nonzero(~np.isfinite(raw))[1]})
        raise ValueError(f"the network produced non-finite forecasts for {bad}")
    return out


@lazy_njit
def _clip_and_order(raw: np.ndarray, low: np.ndarray, high: np.ndarray, out: np.ndarray) -> bool:
    """Write each ``raw[i, j, h]`` triple clipped to ``[low[j], high[j]]`` and sorted; False on a non-finite value."""
    n, m, h, _ = raw.shape
    for i in range(n):
        for j in range(m):
            for k in range(h):
                a, b, c = np.float64(raw[i, j, k, 0]), np.float64(raw[i, j, k, 1]), np.float64(raw[i, j, k, 2])
                if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(c)):
                    return False
                a, b, c = min(max(a, low[j]), high[j]), min(max(b, low[j]), high[j]), min(max(c, low[j]), high[j])
                if a > b:
                    a, b = b, a
                if b > c:
                    b, c = c, b
                if a > b:
                    a, b = b, a
                out[i, j, k, 0], out[i, j, k, 1], out[i, j, k, 2] = a, b, c
    return True


def _names(name: str, values: Sequence[str], index: np.ndarray) -> pl.Series:
    """Return ``values[index]`` as a string column (typed even when empty; no object arrays)."""
    return pl.Series(name, list(values), dtype=pl.String).gather(index)


def _lead(steps: int) -> str:
    minutes = steps * c.STEP_SECONDS // 60
    return f"{minutes}m" if minutes < 60 or minutes % 60 else f"{minutes // 60}h"
