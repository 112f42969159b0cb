"""``GET /metrics``: the latest forecast, alerts and ingest counters in Prometheus' text format.

The forecast, alert and risk families are rendered once per forecast, where the forecast is
made (:func:`render_forecast`, about 0.1 s for 1,000 servers instead of seconds through
``prometheus_client``'s objects), and served as bytes; a custom collector adds the live fleet
figures and counters at scrape time. A scrape never waits for the model. Forecasts are exported
at a few horizons only (30 min, 1 h, 4 h, 8 h) to keep the number of series near
``servers x metrics x 3 x 4``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from workbench.inference.forecast import QUANTILE_NAMES

if TYPE_CHECKING:
    from workbench.alerts import Alert
    from workbench.inference.forecast import Forecast
    from workbench.risk import RiskReport
    from workbench.service.ingest import Ingestor
    from workbench.service.predictor import Predictor

HORIZONS = {"30m": 6, "1h": 12, "4h": 48, "8h": 96}  # label -> steps ahead
FLEET_HEALTH_STATES = ("healthy", "degraded", "critical", "unknown")


def render_forecast(forecast: Forecast | None, alerts: Sequence[Alert], report: RiskReport | None) -> bytes:
    """Render the forecast, current value, alert and risk-score families as Prometheus text.

    Args:
        forecast: The forecast (``None`` or no servers: the families without samples).
        alerts: Active alerts.
        report: Fleet risk of the forecast.
    """
    lines = _forecast_lines(forecast)
    lines += _header("workbench_alert", "1 for each active predictive alert")
    ahead = _header("workbench_alert_minutes_ahead", "Minutes until the forecast band reaches the alert's threshold")
    odds = _header("workbench_alert_probability", "The alert rule's probability that the threshold is passed")
    for a in alerts:
        labels = f'server="{_escape(a.server)}",metric="{a.metric}",severity="{a.severity}",rule="{a.rule}"'
        lines.append(f"workbench_alert{{{labels}}} 1.0")
        ahead.append(f"workbench_alert_minutes_ahead{{{labels}}} {_number(a.minutes_ahead)}")
        if a.probability is not None:
            odds.append(f"workbench_alert_probability{{{labels}}} {_number(a.probability)}")
    lines += ahead + odds
    lines += _header("workbench_risk_score", "Risk score of a server, 0-100")
    if report is not None:
        for server, value in zip(report.servers, report.risk_score.tolist(), strict=True):
            lines.append(f'workbench_risk_score{{server="{_escape(server)}"}} {_number(value)}')
    lines.append("")
    return "\n".join(lines).encode()


def _forecast_lines(forecast: Forecast | None) -> list[str]:
    lines = _header("workbench_forecast", "Forecast quantile of a metric at a horizon, in the metric's contract unit")
    current = _header("workbench_current", "Last observed value (the forecast origin)")
    if forecast is not None and forecast.servers:
        steps = {label: s for label, s in HORIZONS.items() if s <= forecast.horizon}
        picked = forecast.quantiles[:, :, [s - 1 for s in steps.values()], :].tolist()  # (n, m, horizons, 3)
        values = forecast.current.tolist()
        suffixes = [f'quantile="{q}",horizon="{h}"}} ' for h in steps for q in QUANTILE_NAMES]
        for i, server in enumerate(forecast.servers):
            for j, metric in enumerate(forecast.targets):
                labels = f'server="{_escape(server)}",metric="{metric}"'
                current.append(f"workbench_current{{{labels}}} {_number(values[i][j])}")
                prefix = f"workbench_forecast{{{labels},"
                flat = [v for horizon in picked[i][j] for v in horizon]
                lines += [prefix + suffix + _number(v) for suffix, v in zip(suffixes, flat, strict=True)]
    return lines + current


def _header(name: str, documentation: str) -> list[str]:
    return [f"# HELP {name} {documentation}", f"# TYPE {name} gauge"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


class WorkbenchCollector(Collector):
    """Exports the live fleet figures and the ingest counters.

    Args:
        predictor: Source of the latest fleet figures.
        ingestor: Source of the counters and fleet figures.
    """

    def __init__(self, predictor: Predictor, ingestor: Ingestor) -> None:
        self.predictor = predictor
        self.ingestor = ingestor

    def collect(self) -> Iterator[Metric]:
        """Yield the live metric families (called by ``generate_latest``)."""
        yield from self._fleet()
        yield from self._counters()

    def _fleet(self) -> Iterator[Metric]:
        env = self.predictor.latest.summary["environment"]
        incident = GaugeMetricFamily(
            "workbench_incident_probability", "Probability that some server goes critical", labels=["window"]
        )
        incident.add_metric(["30m"], float(env["incident_probability_30m"]))
        incident.add_metric(["8h"], float(env["incident_probability_8h"]))
        yield incident
        health = GaugeMetricFamily("workbench_fleet_health", "1 for the fleet's current health", labels=["state"])
        for state in FLEET_HEALTH_STATES:
            health.add_metric([state], 1.0 if env["fleet_health"] == state else 0.0)
        yield health
        stats = self.ingestor.stats
        yield GaugeMetricFamily("workbench_servers", "Servers held in the windows", value=stats.servers)
        yield GaugeMetricFamily(
            "workbench_warmup_ready_servers", "Servers with enough history to be forecast", value=stats.ready
        )
        yield GaugeMetricFamily("workbench_high_risk_servers", "Servers scoring >= 70", value=env["high_risk_servers"])
        yield GaugeMetricFamily(
            "workbench_last_forecast_seconds", "Duration of the last forecast", value=self.predictor.last_seconds
        )

    def _counters(self) -> Iterator[Metric]:
        counts = self.ingestor.counters
        yield _counter("workbench_feed_batches", "Batches with at least one accepted record", counts.batches)
        yield _counter("workbench_records_accepted", "Records accepted and logged", counts.records_accepted)
        yield _counter("workbench_records_rejected", "Records refused by validation", counts.records_rejected)
        yield _counter("workbench_records_too_old", "Accepted samples older than the windows", counts.too_old)
        refused = CounterMetricFamily(
            "workbench_feed_bodies_refused", "Feed bodies refused before validation", labels=["code"]
        )
        for code, n in sorted(counts.bodies_refused.items()):
            refused.add_metric([str(code)], n)
        yield refused
        yield _counter("workbench_predictions", "Forecasts published", self.predictor.predictions)
        yield _counter("workbench_prediction_errors", "Forecasts that failed", self.predictor.errors)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def make_registry(predictor: Predictor, ingestor: Ingestor) -> CollectorRegistry:
    """Return a private registry (not the process-global one) holding the workbench collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkbenchCollector(predictor, ingestor))
    return registry
