"""The predictive alert rules, each an :class:`~workbench.alerts.AlertRule`.

* :class:`CalibratedRule` (``calibrated``, the default when the bundle has an incident
  calibration): critical while P(the metric is in an incident within 8 h) >= ``τ``, the
  threshold fitted on validation fleets for precision >= 0.7 (``calibration.json``); warning
  from ``WATCH_SHARE * τ`` ("an incident is possible"). The threshold it speaks of is the
  metric's critical level.
* :class:`BandEdgeRule` (``band_edge``): the band edge (p90, or p10 where low is bad) reaches
  the warning or critical level within the horizon.
* :class:`PredictLinearRule` (``predict_linear``): Prometheus' ``predict_linear(v[1h], t)``
  reaches a level for some ``t`` within the horizon.
* :class:`StaticRule` (``static``): the current value is at or past a level.

Every rule reads only the :class:`~workbench.forecast.Forecast` (quantiles, current
values, the last hour) and the levels, so the daemon, its worker, the backtest and the report
run the same objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench import contract as c
from workbench.alerts import RULE_NAMES, AlertRule, Scan
from workbench.baselines import linear_fit
from workbench.early_warning.calibrator import WINDOW_STEPS, IncidentCalibration
from workbench.early_warning.features import warning_features
from workbench.errors import ConfigError
from workbench.risk import exceedance_probability
from workbench.thresholds import Thresholds

if TYPE_CHECKING:
    from workbench.forecast import Forecast

WATCH_SHARE = 0.5  # the calibrated rule warns from half its alert threshold
STEP_MINUTES = c.STEP_SECONDS // 60


class _Levels:
    """Levels of a forecast signed so that larger is worse, and the bad-side band edge."""

    def __init__(self, forecast: Forecast, thresholds: Thresholds) -> None:
        high = c.high_is_bad(forecast.targets)
        self.sign = np.where(high, 1.0, -1.0)[None, :, None]  # (1, m, 1)
        self.raw = thresholds.array(forecast.profiles, forecast.targets)  # (n, m, 2)
        self.level = self.raw * self.sign
        q = forecast.quantiles
        self.edge = np.where(high[None, :, None], q[..., 2], -q[..., 0])  # (n, m, h)

    def first_or_peak(self, level: np.ndarray) -> np.ndarray:
        """Return, per ``(n, m, 2)`` level, the step the edge first reaches it, else its worst step."""
        reached = self.edge[:, :, None, :] >= level[..., None]  # (n, m, 2, h)
        return np.where(reached.any(axis=-1), reached.argmax(axis=-1), self.edge.argmax(axis=2)[..., None])

    def edge_at(self, step: np.ndarray) -> np.ndarray:
        """Return the edge at ``(n, m, 2)`` steps, in the metric's unit."""
        return np.take_along_axis(self.edge, step, axis=2) * self.sign


def _severity(worse: np.ndarray, level: np.ndarray, margin_level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Severity (0, 1, 2) from a signed value against signed levels, and the near test."""
    hit = worse >= level  # NaN levels compare False: no alert
    severity = np.where(hit[..., 1], 2, np.where(hit[..., 0], 1, 0))
    return severity, worse >= margin_level


class BandEdgeRule:
    """The band edge against the warning and critical levels (see the module docstring)."""

    name = "band_edge"

    def scan(self, forecast: Forecast, thresholds: Thresholds, margin: float) -> Scan:
        """Return the band edge's :class:`Scan` (probability: the largest step-wise exceedance)."""
        lv = _Levels(forecast, thresholds)
        worst = lv.edge.max(axis=2, initial=-np.inf)[..., None]  # (n, m, 1)
        severity, near = _severity(worst, lv.level, lv.level - margin * np.abs(lv.raw))
        step = lv.first_or_peak(lv.level)
        high = (lv.sign[..., 0] > 0)[:, :, None, None]
        paths = exceedance_probability(
            forecast.quantiles[:, :, None], lv.raw[..., None], forecast.levels, high_is_bad=high
        )
        return Scan(severity, near, lv.edge_at(step), lv.raw, (step + 1) * STEP_MINUTES, paths.max(axis=-1))


class CalibratedRule:
    """P(incident within the alert window) against the fitted threshold (see the module docstring).

    Args:
        incidents: The bundle's incident calibration.
        threshold: Alert threshold ``τ`` (default: the calibration's fitted one).
    """

    name = "calibrated"

    def __init__(self, incidents: IncidentCalibration, threshold: float | None = None) -> None:
        alert = dict(incidents.alert)
        self.window = str(alert.get("window", "8h"))
        if self.window not in WINDOW_STEPS:
            raise ConfigError(f"calibrated rule: unknown window {self.window!r}")
        tau = threshold if threshold is not None else alert.get("threshold")
        if tau is None or not 0.0 < float(tau) <= 1.0:
            raise ConfigError(f"calibrated rule: the threshold must lie in (0, 1], got {tau!r}")
        self.incidents = incidents
        self.threshold = float(tau)

    def scan(self, forecast: Forecast, thresholds: Thresholds, margin: float) -> Scan:
        """Return the calibrated probabilities' :class:`Scan`; values and lead times come from the band edge."""
        lv = _Levels(forecast, thresholds)
        metric, _ = self.incidents.predict(warning_features(forecast, thresholds).values, forecast.targets)
        p = metric[..., list(WINDOW_STEPS).index(self.window)][..., None]  # (n, m, 1)
        has_level = np.isfinite(lv.raw[..., 1:2])
        levels = np.where(has_level, np.array([WATCH_SHARE * self.threshold, self.threshold]), np.nan)
        severity, near = _severity(p, levels, levels * (1.0 - margin))
        critical = np.repeat(lv.level[..., 1:2], 2, axis=2)
        step = lv.first_or_peak(critical)
        threshold = np.repeat(lv.raw[..., 1:2], 2, axis=2)
        return Scan(severity, near, lv.edge_at(step), threshold, (step + 1) * STEP_MINUTES, np.repeat(p, 2, axis=2))


class PredictLinearRule:
    """Prometheus' ``predict_linear(v[1h], t)`` against the levels within the horizon."""

    name = "predict_linear"

    def scan(self, forecast: Forecast, thresholds: Thresholds, margin: float) -> Scan:
        """Return the fitted line's :class:`Scan` (no probability); NaN lines (too little history) never alert."""
        lv = _Levels(forecast, thresholds)
        recent = forecast.recent
        if recent is None:
            raise ConfigError("predict_linear needs the forecast's last hour of values (Forecast.recent)")
        intercept, slope = linear_fit(recent, np.array([recent.shape[1] - 1]))
        ahead = np.arange(1, forecast.horizon + 1) * float(c.STEP_SECONDS)
        line = (intercept[:, 0, :, None] + slope[:, 0, :, None] * ahead) * lv.sign  # (n, m, h), signed
        worst = np.nanmax(np.where(np.isnan(line), -np.inf, line), axis=2, initial=-np.inf)[..., None]
        severity, near = _severity(worst, lv.level, lv.level - margin * np.abs(lv.raw))
        reached = line[:, :, None, :] >= lv.level[..., None]
        step = np.where(reached.any(-1), reached.argmax(-1), np.nan_to_num(line, nan=-np.inf).argmax(-1)[..., None])
        value = np.take_along_axis(line, step, axis=2) * lv.sign
        return Scan(severity, near, value, lv.raw, (step + 1) * STEP_MINUTES, np.full(lv.raw.shape, np.nan))


class StaticRule:
    """The current value against the levels."""

    name = "static"

    def scan(self, forecast: Forecast, thresholds: Thresholds, margin: float) -> Scan:
        """Return the current values' :class:`Scan` (lead 0, no probability)."""
        lv = _Levels(forecast, thresholds)
        now = forecast.current[..., None] * lv.sign  # (n, m, 1)
        severity, near = _severity(now, lv.level, lv.level - margin * np.abs(lv.raw))
        value = np.repeat(forecast.current[..., None], 2, axis=2)
        return Scan(severity, near, value, lv.raw, np.zeros(lv.raw.shape, np.int64), np.full(lv.raw.shape, np.nan))


def make_rule(name: str, incidents: IncidentCalibration | None) -> AlertRule:
    """Return the rule called ``name`` (one of :data:`RULE_NAMES`).

    Raises:
        ConfigError: for an unknown name, or ``calibrated`` without an incident calibration.
    """
    if name == "calibrated":
        if incidents is None:
            raise ConfigError(
                "the calibrated alert rule needs a bundle with an incident calibration "
                "(run `workbench calibrate-incidents --bundle ...`), or choose another --alert-rule"
            )
        return CalibratedRule(incidents)
    rules: dict[str, type[BandEdgeRule | PredictLinearRule | StaticRule]] = {
        "band_edge": BandEdgeRule,
        "predict_linear": PredictLinearRule,
        "static": StaticRule,
    }
    if name not in rules:
        raise ConfigError(f"unknown alert rule {name!r}; allowed: {', '.join(RULE_NAMES)}")
    return rules[name]()


def resolve_rule(name: str, incidents: IncidentCalibration | None) -> str:
    """Return the rule name ``auto`` stands for (calibrated when there is a calibration), or ``name``.

    Raises:
        ConfigError: when ``name`` is unknown, or ``calibrated`` without a calibration.
    """
    if name == "auto":
        return "calibrated" if incidents is not None else "band_edge"
    make_rule(name, incidents)  # validates
    return name
