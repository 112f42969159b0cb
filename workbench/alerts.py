"""Predictive alerts: the forecast band edge against warning and critical levels.

The band edge is the p90 for metrics where high is bad (the p10 otherwise). When it reaches a
level within the horizon, :func:`predictive_alerts` reports the highest severity reached, at
the first step it is reached. :class:`AlertTracker` follows the alerts across successive
forecasts with hysteresis: an alert is raised when the edge reaches its level, and it is held
until the worst edge value of the horizon has stayed below ``level - margin * |level|`` for
``clear_after`` consecutive updates. Escalation is immediate; de-escalation and recovery pass
through the same hysteresis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.risk import exceedance_probability
from workbench.thresholds import Thresholds

if TYPE_CHECKING:  # the forecast module imports torch; alerts and risk need only numpy
    from workbench.inference.forecast import Forecast

Severity = Literal["warning", "critical"]
Status = Literal["firing", "holding"]
SEVERITIES: tuple[Severity, ...] = ("warning", "critical")  # rank = index + 1; 0 = no alert
CLEAR_REASONS = ("recovered", "warming_up", "missing_metrics", "not_forecast", "no_threshold")
_Pick = tuple[int, int, int, bool, int | None]  # server index, target index, rank, firing, since_step


@dataclass(frozen=True)
class Alert:
    """One predictive alert.

    Attributes:
        server: Server name.
        metric: Contract metric.
        severity: ``warning`` or ``critical``.
        predicted_value: Band edge at the reported step: the first step reaching the level
            when firing, the worst step of the horizon when holding.
        threshold: The level of ``severity`` for the server's profile.
        minutes_ahead: Lead time of the reported step (step 1 is 5 minutes ahead).
        probability: Largest probability, over the horizon's steps, of being past ``threshold``
            (from the interpolated quantiles).
        profile: Server profile (it selects the levels).
        origin_step: Global step index of the forecast origin (the last observation).
        status: ``firing`` when the edge reaches the level in this forecast, ``holding`` when
            the alert is kept by hysteresis.
        since_step: Origin step of the forecast that raised the alert.
    """

    server: str
    metric: str
    severity: Severity
    predicted_value: float
    threshold: float
    minutes_ahead: int
    probability: float
    profile: str
    origin_step: int
    status: Status = "firing"
    since_step: int | None = None

    @property
    def rank(self) -> int:
        """1 for warning, 2 for critical."""
        return SEVERITIES.index(self.severity) + 1

    @property
    def first_step(self) -> int:
        """Global step index of the reported step."""
        return self.origin_step + self.minutes_ahead * 60 // c.STEP_SECONDS

    def to_dict(self) -> dict[str, Any]:
        """Return the REST alert object (the earlier system's keys first, then ours)."""
        return {
            "server": self.server,
            "metric": self.metric,
            "severity": self.severity,
            "predicted_value": round(self.predicted_value, 4),
            "threshold": self.threshold,
            "minutes_ahead": self.minutes_ahead,
            "probability": round(self.probability, 4),
            "profile": self.profile,
            "status": self.status,
            "origin": c.step_time(self.origin_step).isoformat(),
            "expected_at": c.step_time(self.first_step).isoformat(),
            "since": c.step_time(self.origin_step if self.since_step is None else self.since_step).isoformat(),
        }


@dataclass(frozen=True)
class Recovery:
    """An alert that ended, with why: one of :data:`CLEAR_REASONS`.

    Attributes:
        alert: The alert as it was last reported.
        reason: ``recovered`` (the edge stayed below the level), ``warming_up`` (the server has
            no forecast until it has enough history again), ``missing_metrics`` (the server is
            not forecast because some metric has no value in its window), ``not_forecast`` (the
            server or the metric is absent from the forecast) or ``no_threshold`` (the metric
            lost its level).
    """

    alert: Alert
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return the alert's REST object with ``status="cleared"`` and the reason."""
        return {**self.alert.to_dict(), "status": "cleared", "reason": self.reason}


@dataclass(frozen=True)
class AlertUpdate:
    """What one :meth:`AlertTracker.update` changed.

    Attributes:
        active: Every active alert after the update, most urgent first.
        raised: Alerts that did not exist before.
        escalated: Alerts that went from warning to critical.
        deescalated: Alerts that went from critical to warning.
        cleared: Alerts that ended.
    """

    active: list[Alert]
    raised: list[Alert]
    escalated: list[Alert]
    deescalated: list[Alert]
    cleared: list[Recovery]


@dataclass(frozen=True, eq=False)
class _Scan:
    """One forecast against the levels, vectorised; values are signed so that larger is worse."""

    edge: np.ndarray  # (n, m, h) band edge
    sign: np.ndarray  # (m,) +1 where high is bad, -1 otherwise
    level: np.ndarray  # (n, m, 2) warning, critical; NaN where none
    peak: np.ndarray  # (n, m) index of the worst step
    severity: np.ndarray  # (n, m) highest level the edge reaches: 0, 1 or 2
    near: np.ndarray  # (n, m, 2) the edge reaches the level less the margin


def _scan(forecast: Forecast, thresholds: Thresholds, margin: float = 0.0) -> _Scan:
    high = c.high_is_bad(forecast.targets)
    sign = np.where(high, 1.0, -1.0)
    q = forecast.quantiles
    edge = q[..., 2] if high.all() else np.where(high[:, None], q[..., 2], -q[..., 0])
    raw = thresholds.array(forecast.profiles, forecast.targets)
    level = raw * sign[:, None]
    peak = edge.argmax(axis=2)
    worst = np.take_along_axis(edge, peak[..., None], axis=2)  # (n, m, 1)
    hit = worst >= level  # NaN levels compare False: no alert
    severity = np.where(hit[..., 1], 2, np.where(hit[..., 0], 1, 0))
    return _Scan(edge, sign, level, peak, severity, worst >= level - margin * np.abs(raw))


def _build(forecast: Forecast, scan: _Scan, picks: Sequence[_Pick]) -> list[Alert]:
    """Make alerts for ``(server index, target index, severity, firing, since_step)`` picks at once."""
    if not picks:
        return []
    ii, jj, ss, firing = (np.array(col) for col in list(zip(*picks, strict=True))[:4])
    level = scan.level[ii, jj, ss - 1]
    rows = scan.edge[ii, jj]  # (k, h)
    step = np.where(firing, (rows >= level[:, None]).argmax(axis=1), scan.peak[ii, jj])
    sign = scan.sign[jj]
    threshold = level * sign
    value = rows[np.arange(len(picks)), step] * sign
    # The chance the threshold is crossed at some step of the horizon (its largest step-wise value):
    # at the crossing step itself the band edge sits on the threshold, so that value is ~0.1.
    paths = exceedance_probability(forecast.quantiles[ii, jj], threshold[:, None], high_is_bad=(sign > 0)[:, None])
    prob = paths.max(axis=1)
    minutes = (step + 1) * c.STEP_SECONDS // 60
    origin = forecast.last_step[ii]
    return [
        Alert(
            server=forecast.servers[i],
            metric=forecast.targets[j],
            severity=SEVERITIES[s - 1],
            predicted_value=float(value[k]),
            threshold=float(threshold[k]),
            minutes_ahead=int(minutes[k]),
            probability=float(prob[k]),
            profile=forecast.profiles[i],
            origin_step=int(origin[k]),
            status="firing" if fire else "holding",
            since_step=int(origin[k]) if since is None else since,
        )
        for k, (i, j, s, fire, since) in enumerate(picks)
    ]


def _ordered(alerts: list[Alert]) -> list[Alert]:
    return sorted(alerts, key=lambda a: (-a.rank, a.minutes_ahead, -a.probability, a.server, a.metric))


def predictive_alerts(forecast: Forecast, thresholds: Thresholds) -> list[Alert]:
    """Return the alerts of one forecast, without memory of earlier forecasts.

    For each server and metric with a level, the band edge's path over the horizon is compared
    with the critical level, then the warning level; the first level reached gives one alert,
    at the first step that reaches it.

    Args:
        forecast: Quantile forecasts (warming-up servers never alert).
        thresholds: Warning and critical levels, per profile.

    Returns:
        Alerts, critical first, then by lead time.
    """
    scan = _scan(forecast, thresholds)
    ii, jj = np.nonzero(scan.severity)
    picks = [(i, j, int(scan.severity[i, j]), True, None) for i, j in zip(ii.tolist(), jj.tolist(), strict=True)]
    return _ordered(_build(forecast, scan, picks))


def next_severity(current: int, below: int, fresh: int, near: tuple[bool, bool], clear_after: int) -> tuple[int, int]:
    """Return ``(severity, updates below)`` of an active alert after one forecast.

    Args:
        current: Severity rank of the active alert (1 warning, 2 critical).
        below: Consecutive earlier updates with the edge below ``current``'s level less the margin.
        fresh: Highest level the edge reaches in this forecast (0, 1 or 2).
        near: Whether the edge reaches the warning and the critical level less the margin.
        clear_after: Consecutive updates below the margin that end (or lower) the alert.

    Returns:
        The new rank (0 when the alert ends) and the new count of updates below.
    """
    if fresh >= current:
        return fresh, 0  # escalation is immediate
    if near[current - 1]:
        return current, 0  # hovering around the level: hold
    if below + 1 < clear_after:
        return current, below + 1
    for rank in range(current - 1, 0, -1):
        if near[rank - 1]:
            return rank, 0
    return 0, 0


@dataclass
class _Active:
    alert: Alert
    below: int = 0


class AlertTracker:
    """Active alerts across successive forecasts, with hysteresis and recovery.

    Memory holds one entry per active alert, nothing else. Each :meth:`update` counts as one
    step of the hysteresis, so call it once per new forecast.

    Args:
        margin: Fraction of a level below which the edge must stay to count towards clearing.
        clear_after: Consecutive updates below ``level - margin * |level|`` that clear an alert
            (or lower a critical one to warning).
    """

    def __init__(self, *, margin: float = 0.05, clear_after: int = 2) -> None:
        if not 0.0 <= margin < 1.0:
            raise ConfigError(f"alert margin must lie in [0, 1), got {margin!r}")
        if isinstance(clear_after, bool) or not isinstance(clear_after, int) or clear_after < 1:
            raise ConfigError(f"clear_after must be an integer >= 1, got {clear_after!r}")
        self.margin = margin
        self.clear_after = clear_after
        self._active: dict[tuple[str, str], _Active] = {}

    @property
    def active(self) -> list[Alert]:
        """Active alerts, most urgent first."""
        return _ordered([state.alert for state in self._active.values()])

    def update(self, forecast: Forecast, thresholds: Thresholds) -> AlertUpdate:
        """Fold one forecast into the active alerts and say what changed.

        Args:
            forecast: The newest forecast of the fleet.
            thresholds: Warning and critical levels, per profile.
        """
        scan = _scan(forecast, thresholds, self.margin)
        rows = {s: i for i, s in enumerate(forecast.servers)}
        cols = {t: j for j, t in enumerate(forecast.targets)}
        cleared: list[Recovery] = []
        plan: list[tuple[tuple[str, str], str, int]] = []  # key, event, updates below
        picks: list[_Pick] = []
        for key, state in list(self._active.items()):
            where = _locate(key, rows, cols, forecast, scan)
            if isinstance(where, str):
                cleared.append(Recovery(state.alert, where))
                del self._active[key]
                continue
            i, j = where
            fresh = int(scan.severity[i, j])
            near = (bool(scan.near[i, j, 0]), bool(scan.near[i, j, 1]))
            rank, below = next_severity(state.alert.rank, state.below, fresh, near, self.clear_after)
            if rank == 0:
                cleared.append(Recovery(state.alert, "recovered"))
                del self._active[key]
                continue
            event = "escalated" if rank > state.alert.rank else "deescalated" if rank < state.alert.rank else ""
            plan.append((key, event, below))
            picks.append((i, j, rank, fresh >= rank, state.alert.since_step))
        for i, j in zip(*(a.tolist() for a in np.nonzero(scan.severity)), strict=True):
            key = (forecast.servers[i], forecast.targets[j])
            if key not in self._active:
                plan.append((key, "raised", 0))
                picks.append((i, j, int(scan.severity[i, j]), True, None))
        events: dict[str, list[Alert]] = {"raised": [], "escalated": [], "deescalated": [], "": []}
        for (key, event, below), alert in zip(plan, _build(forecast, scan, picks), strict=True):
            self._active[key] = _Active(alert, below)
            events[event].append(alert)
        return AlertUpdate(
            active=self.active,
            raised=_ordered(events["raised"]),
            escalated=_ordered(events["escalated"]),
            deescalated=_ordered(events["deescalated"]),
            cleared=cleared,
        )


def _locate(
    key: tuple[str, str], rows: dict[str, int], cols: dict[str, int], forecast: Forecast, scan: _Scan
) -> tuple[int, int] | str:
    """Return the array position of an active alert's server and metric, or why it must clear."""
    server, metric = key
    if server not in rows:
        if server in forecast.warming_up:
            return "warming_up"
        return "missing_metrics" if server in getattr(forecast, "missing", {}) else "not_forecast"
    if metric not in cols:
        return "not_forecast"
    i, j = rows[server], cols[metric]
    if np.isnan(scan.level[i, j]).all():
        return "no_threshold"
    return i, j
