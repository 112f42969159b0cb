"""Predictive alerts: one seam for the rules, one tracker for their lifecycle.

An :class:`AlertRule` looks at a forecast and says, per server and metric, which severity its
condition reaches (:class:`Scan`), what to report for each severity (value, threshold, lead,
probability) and whether the condition is still *near* (the hysteresis test). The rules live
in :mod:`workbench.alert_rules`: the band edge against the levels, the calibrated incident
probability, Prometheus' ``predict_linear`` and the static threshold. :func:`predictive_alerts`
reports the highest severity each (server, metric) reaches in one forecast.
:class:`AlertTracker` keeps only hysteresis and lifecycle across successive forecasts: an alert
is raised when its condition holds, and it is held until the condition has not been near for
``clear_after`` consecutive updates. Escalation is immediate; de-escalation and recovery pass
through the same hysteresis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.thresholds import Thresholds

if TYPE_CHECKING:  # the forecast module imports torch; alerts and risk need only numpy
    from workbench.forecast import Forecast

Severity = Literal["warning", "critical"]
Status = Literal["firing", "holding"]
RULE_NAMES = ("calibrated", "band_edge", "predict_linear", "static")  # workbench.alert_rules implements them
SEVERITIES: tuple[Severity, ...] = ("warning", "critical")  # rank = index + 1; 0 = no alert
CLEAR_REASONS = ("recovered", "warming_up", "missing_metrics", "not_forecast", "no_threshold")
_VERBS = {"calibrated": "likely to", "band_edge": "may", "predict_linear": "on course to"}
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
        probability: The rule's probability that ``threshold`` is passed (``None`` for rules
            that give none: ``predict_linear``, static).
        profile: Server profile (it selects the levels).
        origin_step: Global step index of the forecast origin (the last observation).
        status: ``firing`` when the edge reaches the level in this forecast, ``holding`` when
            the alert is kept by hysteresis.
        since_step: Origin step of the forecast that raised the alert.
        rule: Name of the rule that raised it.
        current: The metric's last observed value (``None``: unknown); when it is already past
            the level, the alert says so instead of forecasting the crossing.
    """

    server: str
    metric: str
    severity: Severity
    predicted_value: float
    threshold: float
    minutes_ahead: int
    probability: float | None
    profile: str
    origin_step: int
    status: Status = "firing"
    since_step: int | None = None
    rule: str = "band_edge"
    current: float | None = None

    @property
    def rank(self) -> int:
        """1 for warning, 2 for critical."""
        return SEVERITIES.index(self.severity) + 1

    @property
    def already_past(self) -> bool:
        """Whether the last observed value is already at or past the alert's level."""
        if self.current is None or not np.isfinite(self.current):
            return False
        high = c.METRIC_BY_NAME[self.metric].high_is_bad
        return self.current >= self.threshold if high else self.current <= self.threshold

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
            "probability": None if self.probability is None else round(self.probability, 4),
            "profile": self.profile,
            "status": self.status,
            "origin": c.step_time(self.origin_step).isoformat(),
            "expected_at": c.step_time(self.first_step).isoformat(),
            "since": c.step_time(self.origin_step if self.since_step is None else self.since_step).isoformat(),
            "rule": self.rule,
            "current": None if self.current is None else round(self.current, 4),
            "already_past": self.already_past,
            "summary": self.summary(),
        }

    def summary(self) -> str:
        """Return the alert in words, e.g. ``cpu_pct likely to pass 95 in ~40 min (p = 0.83)``."""
        unit = c.METRIC_BY_NAME[self.metric].unit
        direction = "pass" if c.METRIC_BY_NAME[self.metric].high_is_bad else "fall below"
        level = f"{self.threshold:g}{'' if unit in ('', 'ratio') else ' ' + unit}"
        when = "now" if self.minutes_ahead <= 0 else f"in ~{_duration(self.minutes_ahead)}"
        odds = "" if self.probability is None else f" (p = {self.probability:.2f})"
        verb = _VERBS.get(self.rule, "may")
        if self.rule == "static":
            return f"{self.metric} at {self.predicted_value:.4g}, past its {self.severity} level {level}"
        if self.already_past:
            return f"{self.metric} already past {level} (now {self.current:.4g}){odds}"
        return f"{self.metric} {verb} {direction} {level} {when}{odds}".replace("  ", " ")


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
class Scan:
    """What a rule says about one forecast, per server ``i``, metric ``j`` and severity rank ``r``.

    Arrays are ``(servers, metrics)`` or ``(servers, metrics, 2)`` (index ``r - 1``: warning,
    critical); NaN thresholds mean the metric has no level there (never alerts).

    Attributes:
        severity: Highest severity whose condition holds: 0, 1 or 2.
        near: Whether each severity's condition holds within the hysteresis margin.
        value: Value to report per severity (e.g. the band edge where it crosses).
        threshold: The level the alert is about, per severity, in the metric's unit.
        minutes: Lead time to report per severity, minutes from the origin.
        probability: Probability to report per severity (NaN: the rule gives none).
    """

    severity: np.ndarray
    near: np.ndarray
    value: np.ndarray
    threshold: np.ndarray
    minutes: np.ndarray
    probability: np.ndarray


class AlertRule(Protocol):
    """A predictive alert rule: a name and a scan of one forecast."""

    name: str

    def scan(self, forecast: Forecast, thresholds: Thresholds, margin: float) -> Scan:
        """Return the rule's :class:`Scan` of ``forecast``; ``margin`` is the hysteresis share of a level."""
        ...


def _build(forecast: Forecast, scan: Scan, picks: Sequence[_Pick], rule: str) -> list[Alert]:
    """Make alerts for ``(server index, target index, severity, firing, since_step)`` picks."""
    alerts = []
    for i, j, rank, firing, since in picks:
        prob = float(scan.probability[i, j, rank - 1])
        origin = int(forecast.last_step[i])
        alerts.append(
            Alert(
                server=forecast.servers[i],
                metric=forecast.targets[j],
                severity=SEVERITIES[rank - 1],
                predicted_value=float(scan.value[i, j, rank - 1]),
                threshold=float(scan.threshold[i, j, rank - 1]),
                minutes_ahead=int(scan.minutes[i, j, rank - 1]),
                probability=None if np.isnan(prob) else prob,
                profile=forecast.profiles[i],
                origin_step=origin,
                status="firing" if firing else "holding",
                since_step=origin if since is None else since,
                rule=rule,
                current=_finite(forecast.current[i, j]),
            )
        )
    return alerts


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _ordered(alerts: list[Alert]) -> list[Alert]:
    return sorted(alerts, key=lambda a: (-a.rank, a.minutes_ahead, -(a.probability or 0.0), a.server, a.metric))


def predictive_alerts(forecast: Forecast, thresholds: Thresholds, rule: AlertRule | None = None) -> list[Alert]:
    """Return the alerts of one forecast, without memory of earlier forecasts.

    Args:
        forecast: Quantile forecasts (warming-up servers never alert).
        thresholds: Warning and critical levels, per profile.
        rule: The rule (default: :class:`workbench.alert_rules.BandEdgeRule`).

    Returns:
        One alert per server and metric at the highest severity reached, critical first, then
        by lead time.
    """
    rule = rule or _default_rule()
    scan = rule.scan(forecast, thresholds, 0.0)
    ii, jj = np.nonzero(scan.severity)
    picks = [(i, j, int(scan.severity[i, j]), True, None) for i, j in zip(ii.tolist(), jj.tolist(), strict=True)]
    return _ordered(_build(forecast, scan, picks, rule.name))


def _default_rule() -> AlertRule:
    from workbench.alert_rules import BandEdgeRule  # the rules build on this module's Scan

    return BandEdgeRule()


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
        rule: The alert rule (default: :class:`workbench.alert_rules.BandEdgeRule`).
        margin: Fraction of a level within which the rule's condition still counts as near
            (not towards clearing).
        clear_after: Consecutive updates not near that clear an alert (or lower a critical one
            to warning).
    """

    def __init__(self, rule: AlertRule | None = None, *, margin: float = 0.05, clear_after: int = 2) -> None:
        if not 0.0 <= margin < 1.0:
            raise ConfigError(f"alert margin must lie in [0, 1), got {margin!r}")
        if isinstance(clear_after, bool) or not isinstance(clear_after, int) or clear_after < 1:
            raise ConfigError(f"clear_after must be an integer >= 1, got {clear_after!r}")
        self.rule = rule or _default_rule()
        self.margin = margin
        self.clear_after = clear_after
        self._active: dict[tuple[str, str], _Active] = {}

    @property
    def active(self) -> list[Alert]:
        """Active alerts, most urgent first."""
        return _ordered([state.alert for state in self._active.values()])

    def export(self) -> list[dict[str, Any]]:
        """Return the active alerts with their hysteresis, as plain JSON values (see :meth:`restore`)."""
        return [
            {key: value.item() if isinstance(value, np.generic) else value for key, value in asdict(s.alert).items()}
            | {"below": s.below}
            for s in self._active.values()
        ]

    def restore(self, exported: Sequence[dict[str, Any]]) -> None:
        """Take over alerts another tracker exported (a reloaded model keeps the fleet's alerts).

        Raises:
            ConfigError: when an entry is not an exported alert.
        """
        for item in exported:
            fields = dict(item)
            below = fields.pop("below", 0)
            try:
                alert = Alert(**fields)
            except TypeError as exc:
                raise ConfigError(f"not an exported alert: {item!r}") from exc
            self._active[(alert.server, alert.metric)] = _Active(alert, int(below))

    def update(self, forecast: Forecast, thresholds: Thresholds) -> AlertUpdate:
        """Fold one forecast into the active alerts and say what changed.

        Args:
            forecast: The newest forecast of the fleet.
            thresholds: Warning and critical levels, per profile.
        """
        scan = self.rule.scan(forecast, thresholds, self.margin)
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
        for (key, event, below), alert in zip(plan, _build(forecast, scan, picks, self.rule.name), strict=True):
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
    key: tuple[str, str], rows: dict[str, int], cols: dict[str, int], forecast: Forecast, scan: Scan
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
    if np.isnan(scan.threshold[i, j]).all():
        return "no_threshold"
    return i, j


def _duration(minutes: int) -> str:
    """``40 min``, ``2 h``, ``2 h 30 min``."""
    hours, rest = divmod(int(minutes), 60)
    if not hours:
        return f"{rest} min"
    return f"{hours} h" if not rest else f"{hours} h {rest} min"
