"""``GET /metrics``: the latest forecast, alerts and ingest counters in Prometheus' text format.

A custom collector reads the predictor's latest immutable result at scrape time, so a scrape
never waits for the model. Forecasts are exported at a few horizons only (30 min, 1 h, 4 h, 8 h)
to keep the number of series near ``servers x metrics x 3 x 4``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from workbench.inference.forecast import QUANTILE_NAMES

if TYPE_CHECKING:
    from workbench.service.ingest import Ingestor
    from workbench.service.predictor import Predictor

HORIZONS = {"30m": 6, "1h": 12, "4h": 48, "8h": 96}  # label -> steps ahead
FLEET_HEALTH_STATES = ("healthy", "degraded", "critical", "unknown")


class WorkbenchCollector(Collector):
    """Exports the predictor's latest result and the ingest counters.

    Args:
        predictor: Source of the latest forecast, alerts and risk.
        ingestor: Source of the counters and fleet figures.
    """

    def __init__(self, predictor: Predictor, ingestor: Ingestor) -> None:
        self.predictor = predictor
        self.ingestor = ingestor

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by ``generate_latest``)."""
        yield from self._forecast()
        yield from self._alerts()
        yield from self._fleet()
        yield from self._counters()

    def _forecast(self) -> Iterator[Metric]:
        forecast = self.predictor.latest.forecast
        quantiles = GaugeMetricFamily(
            "workbench_forecast",
            "Forecast quantile of a metric at a horizon, in the metric's contract unit",
            labels=["server", "metric", "quantile", "horizon"],
        )
        current = GaugeMetricFamily(
            "workbench_current", "Last observed value (the forecast origin)", labels=["server", "metric"]
        )
        if forecast is not None and forecast.servers:
            steps = {label: s for label, s in HORIZONS.items() if s <= forecast.horizon}
            picked = forecast.quantiles[:, :, [s - 1 for s in steps.values()], :]  # (n, m, horizons, 3)
            for i, server in enumerate(forecast.servers):
                for j, metric in enumerate(forecast.targets):
                    current.add_metric([server, metric], float(forecast.current[i, j]))
                    for h, label in enumerate(steps):
                        for q, name in enumerate(QUANTILE_NAMES):
                            quantiles.add_metric([server, metric, name, label], float(picked[i, j, h, q]))
        yield quantiles
        yield current

    def _alerts(self) -> Iterator[Metric]:
        latest = self.predictor.latest
        alert = GaugeMetricFamily(
            "workbench_alert", "1 for each active predictive alert", labels=["server", "metric", "severity"]
        )
        ahead = GaugeMetricFamily(
            "workbench_alert_minutes_ahead",
            "Minutes until the forecast band reaches the alert's threshold",
            labels=["server", "metric", "severity"],
        )
        for a in latest.alerts:
            alert.add_metric([a.server, a.metric, a.severity], 1.0)
            ahead.add_metric([a.server, a.metric, a.severity], float(a.minutes_ahead))
        yield alert
        yield ahead
        report = latest.report
        score = GaugeMetricFamily("workbench_risk_score", "Risk score of a server, 0-100", labels=["server"])
        if report is not None:
            for server, value in zip(report.servers, report.risk_score.tolist(), strict=True):
                score.add_metric([server], value)
        yield score

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
