"""What the inference daemon publishes after each forecast, and the work that produces it.

:class:`Forecaster` turns a copy of the windows into a :class:`Published` result: it runs the
engine, folds the forecast into the alert tracker, computes fleet risk and encodes every read
document once (``/predictions/current``, ``/alerts/active``, the WebSocket summary and the
forecast part of ``/metrics``). A result is plain bytes and JSON, so the same work runs in the
daemon's process or in its forecast worker process (:mod:`workbench.service.worker`) and comes
back the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from workbench import contract as c
from workbench.alert_rules import make_rule
from workbench.alerts import Alert, AlertTracker
from workbench.drift import DriftMonitor
from workbench.early_warning.calibrator import IncidentCalibration
from workbench.forecast import QUANTILE_NAMES, Forecast
from workbench.inference.window import WindowStore
from workbench.risk import RiskReport, risk
from workbench.service.horizon_points import HorizonPoints
from workbench.service.prom import render_drift, render_forecast
from workbench.service.reads import ServerReads, encode_document, held_profiles
from workbench.thresholds import Thresholds

if TYPE_CHECKING:
    from workbench.inference.engine import Engine


def dumps(data: Any) -> bytes:
    """Encode JSON with orjson (~10x the stdlib's speed on float lists; holds the GIL only per call)."""
    return orjson.dumps(data)


@dataclass(frozen=True, eq=False)
class Published:
    """One prediction, frozen: what every read endpoint serves until the next one.

    Attributes:
        version: Predictions published so far (0: none yet).
        body: The ``GET /predictions/current`` document, encoded.
        alerts_body: The ``GET /alerts/active`` document, encoded.
        summary: The document without ``predictions`` (metadata, environment, alerts).
        metrics: The forecast, alert and risk families of ``GET /metrics`` (Prometheus text).
        seconds: How long the forecast took (engine, alerts and risk).
        reads: ``body`` with where each server's members lie in it, for filtered, summary and
            gzip reads (``None``: only ``body`` can be served).
        points: The forecast at a few horizons, for the history archive (``None``: no forecast).
        drift: The ``GET /drift/status`` document (``None``: no forecast yet).
    """

    version: int
    body: bytes
    alerts_body: bytes
    summary: dict[str, Any]
    metrics: bytes = b""
    seconds: float = 0.0
    reads: ServerReads | None = None
    points: HorizonPoints | None = None
    drift: dict[str, Any] | None = None

    @cached_property
    def text(self) -> str:
        """The ``/predictions/current`` document as text (for WebSocket pushes)."""
        return self.body.decode()

    @cached_property
    def summary_text(self) -> str:
        """The summary as JSON text."""
        return dumps(self.summary).decode()


def empty_forecast(targets: tuple[str, ...], horizon: int) -> Forecast:
    """Return a forecast of no server (its risk report gives the ``environment`` keys with zeros)."""
    m = len(targets)
    return Forecast([], [], targets, np.zeros(0, np.int64), np.zeros((0, m, horizon, 3)), np.zeros((0, m)))


@dataclass(frozen=True)
class Documents:
    """Encodes results into the daemon's documents.

    Attributes:
        targets: The bundle's targets.
        horizon: Forecast steps.
        thresholds: Alert levels (for the fleet figures of an empty result).
        metadata: Fixed metadata keys (model_type, bundle, contract_version, horizon_steps, device).
        incidents: The bundle's incident calibration (``None``: probabilities are reported as
            ``uncalibrated``).
        alert_rule: Name of the alert rule (:data:`workbench.alerts.RULE_NAMES`).
    """

    targets: tuple[str, ...]
    horizon: int
    thresholds: Thresholds
    metadata: Mapping[str, Any]
    incidents: IncidentCalibration | None = None
    alert_rule: str = "band_edge"

    def publish(
        self,
        forecast: Forecast | None,
        alerts: list[Alert],
        report: RiskReport | None,
        *,
        version: int,
        seconds: float = 0.0,
        profiles: Mapping[str, str] | None = None,
        drift: dict[str, Any] | None = None,
    ) -> Published:
        """Encode one result (``forecast=None``: no data yet).

        ``profiles`` gives the profiles of servers without a forecast (default: from their names).
        """
        if forecast is None:
            status, message = "no_data", "no data received yet: POST records to /feed/data"
        elif not forecast.servers:
            status, message = "warming_up", f"every server is warming up (needs {forecast.min_history} steps)"
        else:
            status, message = "ok", None
        now = datetime.now(UTC).isoformat() if forecast is not None else None
        report_or_empty = report or risk(
            empty_forecast(self.targets, self.horizon), self.thresholds, incidents=self.incidents
        )
        origin = None
        if forecast is not None and len(forecast.last_step):
            origin = c.step_time(forecast.last_step.max()).isoformat()
        metadata = {
            **self.metadata,
            "prediction_time": now,
            "data_time": origin,
            "status": status,
            "message": message,
            "version": version,
            "forecast_seconds": round(seconds, 4),
            "servers_forecast": len(forecast.servers) if forecast is not None else 0,
            "servers_warming_up": len(forecast.warming_up) if forecast is not None else 0,
            "servers_missing_metrics": len(forecast.missing) if forecast is not None else 0,
            "model_fit": {"state": drift["state"], "reasons": drift["reasons"][:3]} if drift is not None else None,
        }
        alert_dicts = [a.to_dict() for a in alerts]
        summary = {"metadata": metadata, "environment": report_or_empty.environment(), "alerts": alert_dicts}
        reads = _encode_document(forecast, report.server_json() if report is not None else {}, summary, profiles)
        return Published(
            version=version,
            body=reads.body,
            alerts_body=dumps({"timestamp": now, "count": len(alerts), "alerts": alert_dicts}),
            summary=summary,
            metrics=render_forecast(forecast, alerts, report) + (render_drift(drift) if drift is not None else b""),
            seconds=seconds,
            reads=reads,
            points=HorizonPoints.of(forecast) if forecast is not None and forecast.servers else None,
            drift=drift,
        )


class Forecaster:
    """Forecasts copies of the windows and keeps the alerts' hysteresis between forecasts.

    Args:
        engine: The engine (it reads each copy of the windows; its own are never used).
        documents: The encoder of results.
        drift: Scores the forecasts as actuals arrive (default: no reference, absolute limits).
    """

    def __init__(self, engine: Engine, documents: Documents, drift: DriftMonitor | None = None) -> None:
        self.engine = engine
        self.documents = documents
        self.tracker = AlertTracker(make_rule(documents.alert_rule, documents.incidents))
        self.last: tuple[Forecast, list[Alert]] | None = None
        self.drift = drift or DriftMonitor(documents.targets)

    def close(self, timeout: float = 10.0) -> None:
        """Release the engine's threads (``timeout`` unused: nothing here can hang)."""
        self.engine.close()

    def export_alerts(self) -> list[dict[str, Any]]:
        """Return the active alerts with their hysteresis (:meth:`AlertTracker.export`)."""
        return self.tracker.export()

    def restore_alerts(self, exported: list[dict[str, Any]]) -> None:
        """Take over the alerts another forecaster exported (:meth:`AlertTracker.restore`)."""
        self.tracker.restore(exported)

    def forecast(self, state: Mapping[str, np.ndarray], version: int) -> Published:
        """Forecast the windows of ``state`` (:meth:`WindowStore.state`) and encode the result as ``version``.

        Raises:
            ValueError: when the state is malformed or the network's output is not finite.
        """
        started = time.monotonic()
        store = WindowStore.from_state(state)
        result = self.engine.forecast(store=store)
        update = self.tracker.update(result, self.documents.thresholds)
        report = risk(result, self.documents.thresholds, incidents=self.documents.incidents)
        self.last = (result, update.active)
        seconds = time.monotonic() - started
        waiting = held_profiles(state, [*result.warming_up, *result.missing])
        self.drift.observe(result, store)
        return self.documents.publish(
            result,
            update.active,
            report,
            version=version,
            seconds=seconds,
            profiles=waiting,
            drift=self.drift.report(),
        )


def _encode_document(
    forecast: Forecast | None,
    risk_json: dict[str, Any],
    summary: dict[str, Any],
    profiles: Mapping[str, str] | None = None,
) -> ServerReads:
    """Encode ``/predictions/current``: the shape of :meth:`Forecast.to_json`, straight from the arrays.

    orjson writes each server's rounded quantile arrays directly (about 0.1 s for 1,000 servers
    instead of 1 s through Python lists), one server per call so the GIL is never held long.
    :func:`~workbench.service.reads.encode_document` joins them and notes where each lies, for
    filtered and summary reads. The tests check the result against ``Forecast.to_json``.
    """
    entries = _server_entries(forecast) if forecast is not None else []
    return encode_document(forecast, entries, risk_json, summary, profiles)


def _server_entries(forecast: Forecast) -> list[bytes]:
    # (servers, targets, 3, horizon), C-contiguous so that orjson can write each row directly
    quantiles = np.ascontiguousarray(np.round(forecast.quantiles, 4).transpose(0, 1, 3, 2))
    trend = np.round(forecast.trend(), 6)
    entries = []
    for i, server in enumerate(forecast.servers):
        doc = {
            metric: {
                **{name: quantiles[i, j, k] for k, name in enumerate(QUANTILE_NAMES)},
                "current": float(forecast.current[i, j]),
                "trend": float(trend[i, j]),
                "source": forecast.source,
            }
            for j, metric in enumerate(forecast.targets)
        }
        entries.append(dumps(server) + b":" + orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    rest = replace(
        empty_forecast(forecast.targets, forecast.horizon),
        warming_up=forecast.warming_up,
        missing=forecast.missing,
        min_history=forecast.min_history,
    )
    entries += [dumps(server) + b":" + dumps(entry) for server, entry in rest.to_json().items()]
    return entries
