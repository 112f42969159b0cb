"""The background predictor: forecasts off the request path and publishes immutable results.

Once per new step of data (or every ``interval`` seconds; never busy more than half the time)
it copies the windows under the ingest lock (milliseconds), then, in a worker thread and
without the lock, runs the engine on the copy, folds the forecast into the alert tracker,
computes fleet risk and encodes the REST documents once. The result is a frozen
:class:`Published` that the GET handlers, the WebSocket and ``/metrics`` serve as is, so they
never wait for the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import anyio
import numpy as np
import orjson

from workbench import contract as c
from workbench.alerts import Alert, AlertTracker
from workbench.inference.engine import Engine, WarmupStatus
from workbench.inference.forecast import QUANTILE_NAMES, Forecast
from workbench.inference.window import WindowStore
from workbench.risk import RiskReport, risk
from workbench.service.ingest import FleetStats, Ingestor
from workbench.thresholds import Thresholds

REFRESH_SECONDS = 0.5  # fleet figures and late data within a step are picked up this often
log = logging.getLogger(__name__)


def _dumps(data: Any) -> bytes:
    return orjson.dumps(data)  # ~10x the stdlib's speed on float lists; holds the GIL only briefly per call


@dataclass(frozen=True, eq=False)
class Published:
    """One prediction, frozen: what every read endpoint serves until the next one.

    Attributes:
        version: Predictions published so far (0: none yet).
        body: The ``GET /predictions/current`` document, encoded.
        alerts_body: The ``GET /alerts/active`` document, encoded.
        summary: The document without ``predictions`` (metadata, environment, alerts).
        forecast: The forecast (``None`` before the first one).
        alerts: Active alerts, most urgent first.
        report: Fleet risk (``None`` before the first forecast).
    """

    version: int
    body: bytes
    alerts_body: bytes
    summary: dict[str, Any]
    forecast: Forecast | None = None
    alerts: tuple[Alert, ...] = ()
    report: RiskReport | None = field(default=None, repr=False)

    @cached_property
    def text(self) -> str:
        """The ``/predictions/current`` document as text (for WebSocket pushes)."""
        return self.body.decode()

    @cached_property
    def summary_text(self) -> str:
        """The summary as JSON text."""
        return _dumps(self.summary).decode()


def empty_forecast(targets: tuple[str, ...], horizon: int) -> Forecast:
    """Return a forecast of no server (its risk report gives the ``environment`` keys with zeros)."""
    m = len(targets)
    return Forecast([], [], targets, np.zeros(0, np.int64), np.zeros((0, m, horizon, 3)), np.zeros((0, m)))


class Predictor:
    """Runs forecasts in the background and holds the latest :class:`Published` result.

    Args:
        engine: The engine (its network and settings; its ``store`` is replaced by each copy).
        ingestor: The live windows and their lock.
        thresholds: Alert levels.
        metadata: Fixed metadata keys (model_type, bundle, contract_version, horizon_steps, device).
        interval: Seconds between forecasts; ``None``: once per new step.
        poll_seconds: How often to look for new data.
    """

    def __init__(
        self,
        engine: Engine,
        ingestor: Ingestor,
        thresholds: Thresholds,
        metadata: dict[str, Any],
        *,
        interval: float | None = None,
        poll_seconds: float = 0.1,
    ) -> None:
        self.engine = engine
        self.ingestor = ingestor
        self.thresholds = thresholds
        self.tracker = AlertTracker()
        self.metadata = metadata
        self.interval = interval
        self.poll_seconds = poll_seconds
        self.predictions = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_seconds = 0.0
        self._seen = -1  # generation of the last refresh
        self._forecast_generation = -1
        self._forecast_step = -1
        self._forecast_at = -np.inf
        self._refresh_at = -np.inf
        self.latest = self._publish(None, [], None, "no_data", "no data received yet: POST records to /feed/data")

    # ------------------------------------------------------------------ loop

    async def run(self, on_publish: Callable[[Published], None]) -> None:
        """Forecast whenever due, forever (cancel the task to stop); call ``on_publish`` with each result."""
        while True:
            due = self._due(time.monotonic())
            if due is not None:
                try:
                    result = await anyio.to_thread.run_sync(self.work, due)
                except (ValueError, RuntimeError) as exc:  # e.g. a non-finite forecast: keep the last good one
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("forecast failed; serving the previous result")
                    result = None
                if result is not None:
                    self.latest = result
                    on_publish(result)
            await asyncio.sleep(self.poll_seconds)

    def _due(self, now: float) -> bool | None:
        """Return ``True`` to forecast, ``False`` to refresh the fleet figures only, ``None`` to wait."""
        generation, step = self.ingestor.generation, self.ingestor.newest_step
        if generation == self._seen and self._forecast_generation >= 0:
            return None
        since = now - self._forecast_at
        if self.interval is not None:
            forecast = since >= self.interval and generation != self._forecast_generation
        else:
            stale = generation != self._forecast_generation and since >= REFRESH_SECONDS
            forecast = step > self._forecast_step or stale
        # Rest at least as long as the last forecast took: the model never takes more than half
        # a core from the request path, however fast the steps arrive (a replay, a benchmark).
        if forecast and since >= 2 * self.last_seconds:
            return True
        return False if now - self._refresh_at >= REFRESH_SECONDS else None

    def work(self, forecast: bool) -> Published | None:
        """Copy the windows, refresh the fleet figures and, when ``forecast``, predict (in a worker thread)."""
        started = time.monotonic()
        state, generation = self.ingestor.copy_state()
        shadow = WindowStore.from_state(state)
        histories = shadow.histories()
        self.ingestor.stats = FleetStats.of(histories, self.engine.spec.min_encoder_length)
        self._seen, self._refresh_at = generation, started
        if not forecast:
            return None
        self._forecast_generation = generation
        if not histories:
            return None  # nothing to forecast yet: the interval starts with the first data
        self._forecast_at, self._forecast_step = started, int(state["last"].max(initial=-1))
        self.engine.store = shadow  # only this thread forecasts; the live windows stay with the ingestor
        result = self.engine.forecast()
        update = self.tracker.update(result, self.thresholds)
        report = risk(result, self.thresholds)
        status = "ok" if result.servers else "warming_up"
        message = None if result.servers else f"every server is warming up (needs {result.min_history} steps)"
        self.predictions += 1
        self.last_seconds = time.monotonic() - started
        return self._publish(result, update.active, report, status, message)

    # ------------------------------------------------------------------ documents

    def _publish(
        self,
        forecast: Forecast | None,
        alerts: list[Alert],
        report: RiskReport | None,
        status: str,
        message: str | None,
    ) -> Published:
        now = datetime.now(UTC).isoformat() if forecast is not None else None
        env_report = report or risk(empty_forecast(self.engine.spec.targets, self.engine.spec.horizon), self.thresholds)
        origin = None
        if forecast is not None and len(forecast.last_step):
            origin = c.step_time(forecast.last_step.max()).isoformat()
        metadata = {
            **self.metadata,
            "prediction_time": now,
            "data_time": origin,
            "status": status,
            "message": message,
            "version": self.predictions,
            "forecast_seconds": round(self.last_seconds, 4),
            "servers_forecast": len(forecast.servers) if forecast is not None else 0,
            "servers_warming_up": len(forecast.warming_up) if forecast is not None else 0,
            "servers_missing_metrics": len(forecast.missing) if forecast is not None else 0,
        }
        alert_dicts = [a.to_dict() for a in alerts]
        environment = env_report.environment()
        summary = {"metadata": metadata, "environment": environment, "alerts": alert_dicts}
        risk_json = report.server_json() if report is not None else {}
        return Published(
            version=self.predictions,
            body=_encode_document(forecast, risk_json, summary),
            alerts_body=_dumps({"timestamp": now, "count": len(alerts), "alerts": alert_dicts}),
            summary=summary,
            forecast=forecast,
            alerts=tuple(alerts),
            report=report,
        )

    def warmup(self) -> WarmupStatus:
        """Return the live windows' warm-up progress (a short lock)."""
        with self.ingestor.lock:
            histories = self.ingestor.store.histories()
        need = self.engine.spec.min_encoder_length
        return WarmupStatus(need, histories, sum(1 for n in histories.values() if n >= need))

    def status(self) -> dict[str, Any]:
        """Return the predictor's own figures for ``/status``."""
        return {
            "predictions": self.predictions,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_prediction_time": self.latest.summary["metadata"]["prediction_time"],
            "last_forecast_seconds": round(self.last_seconds, 4),
            "interval": self.interval if self.interval is not None else "per step",
        }


def _encode_document(forecast: Forecast | None, risk_json: dict[str, Any], summary: dict[str, Any]) -> bytes:
    """Encode ``/predictions/current``: the shape of :meth:`Forecast.to_json`, straight from the arrays.

    orjson writes each server's rounded quantile arrays directly (about 0.1 s for 1,000 servers
    instead of 1 s through Python lists), one server per call so the GIL is never held long.
    The tests check the result against ``Forecast.to_json``.
    """
    parts = [b'{"predictions":{']
    if forecast is not None:
        parts.append(b",".join(_server_entries(forecast)))
    parts.append(b'},"alerts":' + _dumps(summary["alerts"]))
    parts.append(b',"environment":' + _dumps(summary["environment"]))
    parts.append(b',"server_risk":' + _dumps(risk_json))
    parts.append(b',"metadata":' + _dumps(summary["metadata"]) + b"}")
    return b"".join(parts)


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
        entries.append(_dumps(server) + b":" + orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    rest = replace(
        empty_forecast(forecast.targets, forecast.horizon),
        warming_up=forecast.warming_up,
        missing=forecast.missing,
        min_history=forecast.min_history,
    )
    entries += [_dumps(server) + b":" + _dumps(entry) for server, entry in rest.to_json().items()]
    return entries
