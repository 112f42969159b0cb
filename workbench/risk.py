"""Exceedance probabilities from quantile forecasts, per-server risk scores and fleet figures.

The model gives three quantiles per step; :func:`exceedance_probability` turns them into
``P(X > threshold)`` through a piecewise-linear CDF with exponential (or linear) tails.
:func:`risk` applies it to every server, metric and step of a :class:`Forecast`.

Rules (all constants below are module-level so that the dashboard and the docs quote them):

* Per metric and window, the probability is the largest exceedance probability over the
  window's steps (30 min = the first 6 steps, 8 h = the first 96). Per server, metrics are
  combined as ``1 - prod(1 - p)`` (independence; ``max`` over metrics would be the lower bound).
* With a bundle's incident calibration (:class:`~workbench.early_warning.IncidentCalibration`),
  the two ``critical`` columns are replaced by probabilities learned from ground truth: per
  metric and per server, P(in an incident at some step of the window); the server's figure is
  the calibrator's own (not ``1 - prod``). ``calibrated`` says which kind a report holds.
* ``risk_score = 100 * max(p_crit_30m, 0.8 p_crit_8h, 0.5 p_warn_30m, 0.4 p_warn_8h)`` on the
  server's combined probabilities: 100 is "critical within 30 min for sure", 80 "critical
  within 8 h for sure", 50 "warning within 30 min", 40 "warning within 8 h". Calibrated, the
  warning terms drop out (ordinary load reaches the warning level; only incidents reach
  critical), so the score is ``100 * max(p_incident_30m, 0.8 p_incident_8h)``. It never
  decreases when any probability grows. The driver is the metric with the largest term.
* Fleet health from the forecast servers' scores: ``critical`` when at least 10 % are high-risk
  (score >= 70); ``degraded`` when at least 2 % are high-risk or at least 10 % are elevated
  (score >= 40); else ``healthy``; ``unknown`` when no server is forecast yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from workbench import contract as c
from workbench.early_warning.calibrator import IncidentCalibration, any_of
from workbench.early_warning.features import warning_features
from workbench.errors import ConfigError
from workbench.thresholds import Thresholds

if TYPE_CHECKING:  # the forecast module imports torch; alerts and risk need only numpy
    from workbench.forecast import Forecast

Tails = Literal["exponential", "linear"]
WINDOW_30M_STEPS = 30 * 60 // c.STEP_SECONDS
WINDOW_8H_STEPS = 8 * 3600 // c.STEP_SECONDS
COLUMNS = ("critical_30m", "critical_8h", "warning_30m", "warning_8h")
WEIGHTS = np.array([1.0, 0.8, 0.5, 0.4])  # risk-score weight of each of COLUMNS
CALIBRATED_WEIGHTS = np.array([1.0, 0.8, 0.0, 0.0])  # calibrated: incidents only
HIGH_RISK_SCORE = 70.0
ELEVATED_RISK_SCORE = 40.0
CRITICAL_SHARE = 0.10
DEGRADED_SHARE = 0.02
ELEVATED_SHARE = 0.10
FLEET_HEALTH = ("healthy", "degraded", "critical", "unknown")
CHUNK_SERVERS = 256


def exceedance_probability(
    quantiles: np.ndarray,
    threshold: np.ndarray | float,
    levels: Sequence[float] = c.QUANTILE_LEVELS,
    *,
    high_is_bad: np.ndarray | bool = True,
    tails: Tails = "exponential",
) -> np.ndarray:
    """Return the probability that the value lies beyond ``threshold`` in the bad direction.

    The CDF runs linearly through ``(p10, 0.1), (p50, 0.5), (p90, 0.9)``. Beyond the outer
    quantiles it continues with the density of the adjacent segment, decaying exponentially
    (``tails="exponential"``: a threshold a little past the p90 keeps a small probability) or
    linearly until it reaches 0 or 1 (``tails="linear"``: zero from a quarter of
    ``p90 - p50`` past the p90 on). Equal quantiles are point masses, so a band with
    ``p10 == p50 == p90 == q`` gives 1 below ``q`` and 0 from ``q`` on. The result never
    increases as the threshold moves in the bad direction.

    Args:
        quantiles: ``(..., 3)`` ordered quantiles at ``levels``.
        threshold: Broadcastable to ``quantiles.shape[:-1]``.
        levels: Three increasing probabilities in (0, 1).
        high_is_bad: ``True`` for ``P(X > threshold)``, ``False`` for ``P(X < threshold)``;
            broadcastable to ``quantiles.shape[:-1]``.
        tails: How the CDF continues beyond the outer quantiles.

    Returns:
        Probabilities in [0, 1] with the broadcast shape of ``quantiles[..., 0]`` and ``threshold``.
    """
    lv = _check_levels(levels, tails)
    high = np.asarray(high_is_bad, dtype=bool)
    q = np.asarray(quantiles, dtype=np.float64)
    return _probability(_distance(q, np.asarray(threshold, dtype=np.float64), high), lv, high, tails)


def _check_levels(levels: Sequence[float], tails: str) -> np.ndarray:
    lv = np.asarray(levels, dtype=np.float64)
    if lv.shape != (3,) or not (0 < lv[0] < lv[1] < lv[2] < 1):
        raise ConfigError(f"quantile levels must be three increasing numbers in (0, 1), got {list(levels)}")
    if tails not in ("exponential", "linear"):
        raise ConfigError(f"tails must be one of: exponential, linear (got {tails!r})")
    return lv


def _distance(q: np.ndarray, t: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Return how far ``t`` lies beyond the median in the bad direction, in half-bands.

    The half-band is ``p90 - p50`` above the median and ``p50 - p10`` below it (mirrored where
    low is bad). The exceedance probability is a non-increasing function of this distance
    alone, so the largest probability over steps is the probability of the smallest distance.
    """
    if high.all():
        return _standardised(q, t)
    flipped = _standardised(-q[..., ::-1], -t)  # P(X < t) = P(-X > -t)
    if not high.any():
        return flipped
    return np.where(high, _standardised(q, t), flipped)


def _standardised(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    d = t - q[..., 1]
    up = d >= 0
    w = np.where(up, q[..., 2] - q[..., 1], q[..., 1] - q[..., 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = d / w  # +-inf beyond a point mass
    return np.where(up & (w == 0), np.inf, z)  # at a point mass nothing lies above it


def _probability(z: np.ndarray, lv: np.ndarray, high: np.ndarray, tails: str) -> np.ndarray:
    """Map :func:`_distance` to probabilities (mirrored levels where low is bad)."""
    if high.all():
        return _from_distance(z, lv, tails)
    below = _from_distance(z, 1.0 - lv[::-1], tails)
    if not high.any():
        return below
    return np.where(high, _from_distance(z, lv, tails), below)


def _from_distance(z: np.ndarray, lv: np.ndarray, tails: str) -> np.ndarray:
    a, b, s = 1.0 - lv  # P(X > p10), P(X > p50), P(X > p90)
    above = _side(z, b, b - s, s, tails)  # z >= 0: survival beyond the median
    below = np.maximum(1.0 - _side(-z, 1.0 - b, a - b, 1.0 - a, tails), b)  # z < 0: 1 - CDF
    return np.where(z >= 0, above, below)


def _side(u: np.ndarray, mid_mass: float, segment_mass: float, tail_mass: float, tails: str) -> np.ndarray:
    """Mass beyond ``u`` half-bands past the median (``u >= 0``; other values are discarded)."""
    line = mid_mass - segment_mass * u  # the linear segment, continued
    if tails == "linear":
        return np.clip(line, 0.0, mid_mass)
    with np.errstate(over="ignore", invalid="ignore"):
        tail = tail_mass * np.exp(-(segment_mass / tail_mass) * (u - 1.0))  # segment's density at the edge
    return np.where(u < 1.0, np.maximum(line, tail_mass), tail)


@dataclass(frozen=True, eq=False)
class RiskReport:
    """Exceedance probabilities, risk scores and fleet figures for one forecast.

    Attributes:
        servers: Forecast servers, in row order.
        profiles: Profile of each server.
        targets: Forecast metrics, in column order of ``metric_probabilities``.
        metric_probabilities: ``(servers, targets, 4)`` probabilities in :data:`COLUMNS` order.
        probabilities: ``(servers, 4)`` per-server probabilities (metrics combined).
        risk_score: ``(servers,)`` scores in [0, 100].
        driver: Metric with the largest weighted probability per server (``None`` at 0).
        warming_up: Servers not forecast yet (too little history).
        missing: Servers not forecast because some targets have no value in their window.
        calibrated: Whether the critical columns are incident probabilities learned from ground
            truth (``False``: band exceedances, not checked against any).
        healthy: Per window (``30m``, ``8h``), the fleet probability a healthy fleet of this many
            forecast servers shows (from the calibration's record; ``None`` when unknown).
    """

    servers: tuple[str, ...]
    profiles: tuple[str, ...]
    targets: tuple[str, ...]
    metric_probabilities: np.ndarray
    probabilities: np.ndarray
    risk_score: np.ndarray
    driver: tuple[str | None, ...]
    warming_up: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    calibrated: bool = False
    healthy: dict[str, float] | None = None

    @property
    def p_critical_30m(self) -> np.ndarray:
        """Per server: probability that some metric goes critical within 30 min."""
        return self.probabilities[:, 0]

    @property
    def p_critical_8h(self) -> np.ndarray:
        """Per server: probability that some metric goes critical within 8 h."""
        return self.probabilities[:, 1]

    @property
    def p_warning_30m(self) -> np.ndarray:
        """Per server: probability that some metric reaches its warning level within 30 min."""
        return self.probabilities[:, 2]

    @property
    def p_warning_8h(self) -> np.ndarray:
        """Per server: probability that some metric reaches its warning level within 8 h."""
        return self.probabilities[:, 3]

    @property
    def incident_probability_30m(self) -> float:
        """Probability that at least one server goes critical within 30 min (servers independent)."""
        return float(any_of(self.p_critical_30m, axis=0))

    @property
    def incident_probability_8h(self) -> float:
        """Probability that at least one server goes critical within 8 h (servers independent)."""
        return float(any_of(self.p_critical_8h, axis=0))

    @property
    def expected_incidents_30m(self) -> float:
        """Expected number of servers going critical within 30 min (does not saturate at 1)."""
        return float(self.p_critical_30m.sum())

    @property
    def expected_incidents_8h(self) -> float:
        """Expected number of servers going critical within 8 h."""
        return float(self.p_critical_8h.sum())

    @property
    def high_risk_servers(self) -> int:
        """Forecast servers with a risk score of at least :data:`HIGH_RISK_SCORE`."""
        return int((self.risk_score >= HIGH_RISK_SCORE).sum())

    @property
    def total_servers(self) -> int:
        """Forecast, warming-up and missing-metric servers."""
        return len(self.servers) + len(self.warming_up) + len(self.missing)

    @property
    def fleet_health(self) -> str:
        """``healthy``, ``degraded``, ``critical`` or ``unknown``, by :func:`fleet_health`."""
        return fleet_health(self.risk_score)

    def environment(self) -> dict[str, Any]:
        """Return the REST ``environment`` object (the earlier system's keys first, then ours)."""
        return {
            "incident_probability_30m": round(self.incident_probability_30m, 4),
            "incident_probability_8h": round(self.incident_probability_8h, 4),
            "high_risk_servers": self.high_risk_servers,
            "total_servers": self.total_servers,
            "fleet_health": self.fleet_health,
            "expected_incidents_30m": round(self.expected_incidents_30m, 4),
            "expected_incidents_8h": round(self.expected_incidents_8h, 4),
            "forecast_servers": len(self.servers),
            "warming_up_servers": len(self.warming_up),
            "missing_metrics_servers": len(self.missing),
            "max_risk_score": round(float(self.risk_score.max(initial=0.0)), 1),
            "probabilities": "calibrated" if self.calibrated else "uncalibrated",
            **{
                f"healthy_probability_{w}": None if self.healthy is None else round(self.healthy[w], 4)
                for w in ("30m", "8h")
            },
        }

    def server_json(self) -> dict[str, dict[str, Any]]:
        """Return ``{server: {risk_score, driver, profile, p_critical_30m, ...}}``, warming-up included."""
        out: dict[str, dict[str, Any]] = {}
        for i, server in enumerate(self.servers):
            out[server] = {
                "risk_score": round(float(self.risk_score[i]), 1),
                "driver": self.driver[i],
                "profile": self.profiles[i],
                **{f"p_{col}": round(float(self.probabilities[i, k]), 4) for k, col in enumerate(COLUMNS)},
            }
        for server in self.warming_up:
            out[server] = {"risk_score": None, "driver": None, "source": "warming_up"}
        for server in self.missing:
            out[server] = {"risk_score": None, "driver": None, "source": "missing_metrics"}
        return out

    def to_json(self) -> dict[str, Any]:
        """Return ``{"environment": {...}, "servers": {...}}`` as plain JSON data."""
        return {"environment": self.environment(), "servers": self.server_json()}


def fleet_health(risk_score: np.ndarray) -> str:
    """Return the fleet's health from its forecast servers' risk scores.

    ``critical``: at least :data:`CRITICAL_SHARE` of servers score >= :data:`HIGH_RISK_SCORE`;
    ``degraded``: at least :data:`DEGRADED_SHARE` score that high, or at least
    :data:`ELEVATED_SHARE` score >= :data:`ELEVATED_RISK_SCORE`; ``healthy`` otherwise;
    ``unknown`` when there is no score (every server is warming up).
    """
    scores = np.asarray(risk_score, dtype=np.float64)
    if scores.size == 0:
        return "unknown"
    high = float(np.mean(scores >= HIGH_RISK_SCORE))
    if high >= CRITICAL_SHARE:
        return "critical"
    if high >= DEGRADED_SHARE or float(np.mean(scores >= ELEVATED_RISK_SCORE)) >= ELEVATED_SHARE:
        return "degraded"
    return "healthy"


def risk(
    forecast: Forecast,
    thresholds: Thresholds,
    *,
    incidents: IncidentCalibration | None = None,
    tails: Tails = "exponential",
) -> RiskReport:
    """Compute incident probabilities, risk scores and fleet figures for a forecast.

    Args:
        forecast: Quantile forecasts; servers without one (warming up, missing metrics) count in
            ``total_servers`` only.
        thresholds: Warning and critical levels (per profile); metrics without one score 0.
        incidents: The bundle's incident calibration; ``None`` leaves the band exceedances,
            reported as ``uncalibrated``.
        tails: Passed to :func:`exceedance_probability`.
    """
    per_metric = _metric_probabilities(forecast, thresholds, tails)
    combined = any_of(per_metric, axis=1)
    weights = WEIGHTS
    if incidents is not None and len(forecast.servers):
        features = warning_features(forecast, thresholds)
        per_metric[..., :2], combined[:, :2] = incidents.predict(features.values, forecast.targets)
        weights = CALIBRATED_WEIGHTS
    weighted = (per_metric * weights).max(axis=2)  # (servers, targets)
    best = weighted.argmax(axis=1) if weighted.size else np.zeros(len(forecast.servers), dtype=np.int64)
    driver = tuple(
        forecast.targets[j] if weighted.size and weighted[i, j] > 0 else None for i, j in enumerate(best.tolist())
    )
    return RiskReport(
        servers=tuple(forecast.servers),
        profiles=tuple(forecast.profiles),
        targets=tuple(forecast.targets),
        metric_probabilities=per_metric,
        probabilities=combined,
        risk_score=100.0 * (combined * weights).max(axis=1, initial=0.0),
        driver=driver,
        warming_up=tuple(forecast.warming_up),
        missing=tuple(getattr(forecast, "missing", {})),  # servers whose window lacks a target
        calibrated=incidents is not None,
        healthy=incidents.healthy_fleet_probability(len(forecast.servers)) if incidents is not None else None,
    )


def _metric_probabilities(forecast: Forecast, thresholds: Thresholds, tails: Tails) -> np.ndarray:
    """Return ``(servers, targets, 4)`` windowed probabilities in :data:`COLUMNS` order."""
    n, m = len(forecast.servers), len(forecast.targets)
    out = np.zeros((n, m, len(COLUMNS)))
    levels = thresholds.array(forecast.profiles, forecast.targets)
    cols = np.flatnonzero(~np.isnan(levels).all(axis=(0, 2)))  # metrics with a level somewhere
    if n == 0 or cols.size == 0:
        return out
    h8 = min(WINDOW_8H_STEPS, forecast.horizon)
    h30 = min(WINDOW_30M_STEPS, h8)
    high = c.high_is_bad(forecast.targets)[cols]
    z = np.empty((n, cols.size, 4))
    for start in range(0, n, CHUNK_SERVERS):  # chunks keep the temporaries in cache
        rows = slice(start, start + CHUNK_SERVERS)
        q = forecast.quantiles[rows][:, cols, None, :h8]  # (c, k, 1, h, 3)
        dist = _distance(q, levels[rows][:, cols, :, None], high[:, None, None])  # (c, k, 2, h)
        # The largest probability over a window is the probability of the smallest distance.
        z[rows, :, 0:2] = dist[:, :, ::-1, :h30].min(axis=-1)  # critical, warning within 30 min
        z[rows, :, 2:4] = dist[:, :, ::-1].min(axis=-1)  # critical, warning within 8 h
    out[:, cols] = _probability(z[..., [0, 2, 1, 3]], _check_levels(forecast.levels, tails), high[:, None], tails)
    return np.nan_to_num(out, nan=0.0)  # NaN where a profile has no level for the metric
