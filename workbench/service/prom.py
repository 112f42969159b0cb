"""``GET /metrics``: the latest forecast, alerts and ingest counters in Prometheus' text format.

Names follow Prometheus' conventions and pass ``promtool check metrics``: one family per
contract metric in base units (``workbench_forecast_cpu_ratio``, ``..._latency_seconds``,
``..._disk_io_bytes_per_second``; names and factors come from :class:`workbench.contract.Metric`),
the forecast band as ``band="p10|p50|p90"`` (not ``quantile``: these are gauges, not a summary),
risk and probabilities in 0-1, counters ending in ``_total``. Per-server series carry the
server as ``instance``; scrape with ``honor_labels: true`` so Prometheus keeps it instead of
renaming it ``exported_instance`` (see ``examples/prometheus/``).

The forecast, alert and risk families are rendered once per forecast, where the forecast is
made (:func:`render_forecast`, about 0.1 s for 1,000 servers instead of seconds through
``prometheus_client``'s objects), and served as bytes; a custom collector adds the live fleet
figures and counters at scrape time. A scrape never waits for the model. Forecasts are exported
at a few horizons only (30 min, 1 h, 4 h, 8 h) to keep the number of series near
``servers x metrics x 3 x 4``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

import workbench
from workbench import contract as c
from workbench.drift import STATES as DRIFT_STATES
from workbench.forecast import QUANTILE_NAMES
from workbench.risk import HIGH_RISK_SCORE

if TYPE_CHECKING:
    from workbench.alerts import Alert
    from workbench.forecast import Forecast
    from workbench.risk import RiskReport
    from workbench.service.alertmanager import AlertmanagerPusher
    from workbench.service.ingest import Ingestor
    from workbench.service.predictor import Predictor

HORIZONS = {"30m": 6, "1h": 12, "4h": 48, "8h": 96}  # label -> steps ahead
FLEET_HEALTH_STATES = ("healthy", "degraded", "critical", "unknown")
WINDOWS = ("30m", "8h")
INSTANCE_NOTE = "instance is the server (scrape with honor_labels: true)"
BUILD_LABELS = ("contract_version", "bundle", "model_type", "alert_rule")


def forecast_name(metric: c.Metric) -> str:
    """Return the forecast family of a contract metric, e.g. ``workbench_forecast_cpu_ratio``."""
    return f"workbench_forecast_{metric.prometheus_name}"


def observed_name(metric: c.Metric) -> str:
    """Return the last-observed family of a contract metric, e.g. ``workbench_observed_cpu_ratio``."""
    return f"workbench_observed_{metric.prometheus_name}"


def render_forecast(forecast: Forecast | None, alerts: Sequence[Alert], report: RiskReport | None) -> bytes:
    """Render the forecast, observed value, alert and risk families as Prometheus text.

    Args:
        forecast: The forecast (``None`` or no servers: the families without samples).
        alerts: Active alerts.
        report: Fleet risk of the forecast.
    """
    lines = _forecast_lines(forecast) + _alert_lines(alerts) + _risk_lines(report) + [""]
    return "\n".join(lines).encode()


def _forecast_lines(forecast: Forecast | None) -> list[str]:
    """One forecast and one observed family per target, each with all its servers (families stay contiguous)."""
    targets = forecast.targets if forecast is not None else c.METRIC_NAMES
    metrics = [c.METRIC_BY_NAME[t] for t in targets]
    bands: list[str] = []
    observed: list[str] = []
    picked: list[Any] = []
    current: list[Any] = []
    instances: list[str] = []
    suffixes: list[str] = []
    if forecast is not None and forecast.servers:
        steps = {label: s for label, s in HORIZONS.items() if s <= forecast.horizon}
        scale = np.array([m.to_base for m in metrics])
        picked = (forecast.quantiles[:, :, [s - 1 for s in steps.values()], :] * scale[:, None, None]).tolist()
        current = (forecast.current * scale).tolist()
        instances = [f'{{instance="{_escape(server)}"' for server in forecast.servers]
        suffixes = [f',band="{q}",horizon="{h}"}} ' for h in steps for q in QUANTILE_NAMES]
    for j, metric in enumerate(metrics):
        name, seen = forecast_name(metric), observed_name(metric)
        bands += _header(name, f"Forecast {metric.description} by band (p10/p50/p90) and horizon; {_unit(metric)}")
        observed += _header(seen, f"Last observed {metric.description} (the forecast origin); {_unit(metric)}")
        for i, instance in enumerate(instances):
            observed.append(f"{seen}{instance}}} {_number(current[i][j])}")
            prefix = name + instance
            flat = [v for horizon in picked[i][j] for v in horizon]
            bands += [prefix + suffix + _number(v) for suffix, v in zip(suffixes, flat, strict=True)]
    return bands + observed


def _unit(metric: c.Metric) -> str:
    return f"base units (contract {metric.name} in {metric.unit} x {metric.to_base:.10g}); {INSTANCE_NOTE}"


def _alert_lines(alerts: Sequence[Alert]) -> list[str]:
    firing = _header("workbench_alert", f"1 for each active predictive alert; {INSTANCE_NOTE}")
    lead = _header("workbench_alert_lead_seconds", "Seconds until the forecast reaches the alert's threshold")
    odds = _header("workbench_alert_probability", "The alert rule's probability (0-1) that the threshold is passed")
    for a in alerts:
        labels = f'{{instance="{_escape(a.server)}",metric="{a.metric}",severity="{a.severity}",rule="{a.rule}"}} '
        firing.append(f"workbench_alert{labels}1")
        lead.append(f"workbench_alert_lead_seconds{labels}{_number(a.minutes_ahead * 60)}")
        if a.probability is not None:
            odds.append(f"workbench_alert_probability{labels}{_number(a.probability)}")
    return firing + lead + odds


def _risk_lines(report: RiskReport | None) -> list[str]:
    lines = _header("workbench_risk", f"Risk of a server, 0-1 (risk_score / 100); {INSTANCE_NOTE}")
    if report is not None:
        for server, value in zip(report.servers, (report.risk_score / 100.0).tolist(), strict=True):
            lines.append(f'workbench_risk{{instance="{_escape(server)}"}} {_number(value)}')
    return lines


def render_drift(drift: Mapping[str, Any]) -> bytes:
    """Render the drift state, the fleet's scored accuracy and the input check as Prometheus text.

    Args:
        drift: The ``GET /drift/status`` document (:meth:`workbench.drift.DriftMonitor.report`).
    """
    lines = _header("workbench_drift_state", "1 for the model's drift state (rule: GET /drift/status)")
    lines += [f'workbench_drift_state{{state="{state}"}} {int(drift["state"] == state)}' for state in DRIFT_STATES]
    for key, what in [("ratio", "Pinball loss relative to a climatological band's"), ("coverage", "p10-p90 coverage")]:
        name = f"workbench_drift_{key}"
        lines += _header(name, f"{what}, scored as actuals arrive (decayed, per metric and horizon band)")
        for band, per in drift["accuracy"].items():
            for metric, figures in per.items():
                if figures[key] is not None:
                    lines.append(f'{name}{{metric="{metric}",band="{band}"}} {_number(figures[key])}')
    inputs = drift["inputs"]
    lines += _header("workbench_drift_inputs_unlike_training_servers", "Servers whose inputs are unlike training")
    lines.append(f"workbench_drift_inputs_unlike_training_servers {inputs['servers_unlike_training']}")
    return "\n".join([*lines, ""]).encode()


def _header(name: str, documentation: str) -> list[str]:
    return [f"# HELP {name} {documentation}", f"# TYPE {name} gauge"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isfinite(value):
        return "%.15g" % value  # noqa: UP031 (the shortest form of 97.5 x 0.01: 0.975)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


class WorkbenchCollector(Collector):
    """Exports the build, the live fleet figures and the counters.

    Args:
        predictor: Source of the latest fleet figures and metadata.
        ingestor: Source of the counters and fleet figures.
        alertmanager: The Alertmanager pusher, whose posts are counted (``None``: not configured).
    """

    def __init__(
        self, predictor: Predictor, ingestor: Ingestor, alertmanager: AlertmanagerPusher | None = None
    ) -> None:
        self.predictor = predictor
        self.ingestor = ingestor
        self.alertmanager = alertmanager

    def collect(self) -> Iterator[Metric]:
        """Yield the live metric families (called by ``generate_latest``)."""
        summary = self.predictor.latest.summary
        yield _build_info(summary["metadata"])
        yield from self._fleet(summary["environment"])
        yield from self._counters()

    def _fleet(self, env: Mapping[str, Any]) -> Iterator[Metric]:
        yield _windows(
            "workbench_incident_probability", "Probability (0-1) that some server goes critical", env, "incident"
        )
        if all(env.get(f"healthy_probability_{w}") is not None for w in WINDOWS):
            yield _windows(
                "workbench_incident_probability_healthy",
                "The fleet probability a healthy fleet of this size shows (read the live figure against it)",
                env,
                "healthy",
            )
        health = GaugeMetricFamily("workbench_fleet_health", "1 for the fleet's current health", labels=["state"])
        for state in FLEET_HEALTH_STATES:
            health.add_metric([state], 1.0 if env["fleet_health"] == state else 0.0)
        yield health
        stats = self.ingestor.stats
        yield GaugeMetricFamily("workbench_servers", "Servers held in the windows", value=stats.servers)
        yield GaugeMetricFamily(
            "workbench_warmup_ready_servers", "Servers with enough history to be forecast", value=stats.ready
        )
        yield GaugeMetricFamily(
            "workbench_high_risk_servers",
            f"Servers with workbench_risk >= {HIGH_RISK_SCORE / 100:g}",
            value=env["high_risk_servers"],
        )
        yield GaugeMetricFamily(
            "workbench_last_forecast_duration_seconds",
            "Duration of the last forecast",
            value=self.predictor.last_seconds,
        )

    def _counters(self) -> Iterator[Metric]:
        counts = self.ingestor.counters
        yield _counter("workbench_feed_batches", "Batches with at least one accepted record", counts.batches)
        yield _counter("workbench_records_accepted", "Records accepted and logged", counts.records_accepted)
        yield _counter("workbench_records_rejected", "Records refused by validation", counts.records_rejected)
        too_old = "Samples not stored: older than their server's window"
        yield _counter("workbench_records_too_old", too_old, counts.too_old)
        yield _labelled_counter(
            "workbench_servers_evicted",
            "Servers dropped from the windows: idle (silent past the idle bound) or capacity (LRU at max servers)",
            "reason",
            {"idle": counts.evicted_idle, "capacity": counts.evicted_capacity},
        )
        yield _labelled_counter(
            "workbench_feed_bodies_refused", "Feed bodies refused before validation", "code", counts.bodies_refused
        )
        yield _counter("workbench_predictions", "Forecasts published", self.predictor.predictions)
        yield _counter("workbench_prediction_errors", "Forecasts that failed", self.predictor.errors)
        if self.alertmanager is not None:
            yield _labelled_counter(
                "workbench_alertmanager_posts", "POSTs of alerts to Alertmanager", "outcome", self.alertmanager.posts
            )


def _build_info(metadata: Mapping[str, Any]) -> Metric:
    info = InfoMetricFamily("workbench_build", "The daemon's version, contract, bundle and alert rule")
    labels = {key: str(metadata.get(key) or "") for key in BUILD_LABELS}
    info.add_metric([], {"version": workbench.__version__, **labels})
    return info


def _windows(name: str, documentation: str, env: Mapping[str, Any], key: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["window"])
    for window in WINDOWS:
        family.add_metric([window], float(env[f"{key}_probability_{window}"]))
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled_counter(name: str, documentation: str, label: str, counts: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, n in sorted(counts.items(), key=lambda kv: str(kv[0])):
        family.add_metric([str(key)], n)
    return family


def make_registry(
    predictor: Predictor, ingestor: Ingestor, alertmanager: AlertmanagerPusher | None = None
) -> CollectorRegistry:
    """Return a private registry (not the process-global one) holding the workbench collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkbenchCollector(predictor, ingestor, alertmanager))
    return registry
