"""The background predictor: forecasts off the request path and publishes immutable results.

Once per new step of data (or every ``interval`` seconds; never busy more than half the time)
it copies the windows under the ingest lock (milliseconds) and hands the copy to its backend:
the forecast worker process (:class:`~workbench.service.worker.ForecastProcess`, the daemon's
default) or a :class:`~workbench.service.documents.Forecaster` in a thread of this process.
Either runs the engine, folds the forecast into the alert tracker, computes fleet risk and
encodes the documents once. The result is a frozen :class:`Published` that the GET handlers,
the WebSocket and ``/metrics`` serve as is, so they never wait for the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio
import numpy as np

from workbench.inference.window import WarmupStatus, WindowStore
from workbench.service.documents import Documents, Published
from workbench.service.ingest import FleetStats, Ingestor

REFRESH_SECONDS = 0.5  # fleet figures and late data within a step are picked up this often
RETRY_MAX_SECONDS = 60.0  # a failing forecast is retried after 1, 2, 4, ... s, at most this
log = logging.getLogger(__name__)


class Backend(Protocol):
    """Where forecasts run: :class:`~workbench.service.documents.Forecaster` or the worker process."""

    def forecast(self, state: Mapping[str, np.ndarray], version: int) -> Published:
        """Forecast a copy of the windows and encode the result as ``version``."""
        ...

    def export_alerts(self) -> list[dict[str, Any]]:
        """Return the active alerts with their hysteresis, as plain JSON values."""
        ...

    def restore_alerts(self, exported: list[dict[str, Any]]) -> None:
        """Take over the alerts another backend exported."""
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Release what the backend holds (a worker process, threads), waiting at most ``timeout`` seconds."""
        ...


class Predictor:
    """Runs forecasts in the background and holds the latest :class:`Published` result.

    Args:
        backend: Where forecasts run.
        ingestor: The live windows and their lock.
        documents: The encoder of results (for the placeholder before the first forecast).
        min_history: Steps a server needs before it is forecast.
        interval: Seconds between forecasts; ``None``: once per new step.
        poll_seconds: How often to look for new data.
    """

    def __init__(
        self,
        backend: Backend,
        ingestor: Ingestor,
        documents: Documents,
        min_history: int,
        *,
        interval: float | None = None,
        poll_seconds: float = 0.1,
    ) -> None:
        self.backend = backend
        self._backend_lock = threading.Lock()  # held while a forecast runs: a swap waits for it
        self.ingestor = ingestor
        self.min_history = min_history
        self.interval = interval
        self.poll_seconds = poll_seconds
        self.predictions = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_seconds = 0.0
        self._busy_seconds = 0.0
        self._failures = 0  # in a row
        self._retry_at = -np.inf
        self._seen = -1  # generation of the last refresh
        self._forecast_generation = -1
        self._forecast_step = -1
        self._forecast_at = -np.inf
        self._refresh_at = -np.inf
        self.latest = documents.publish(None, [], None, version=0)

    # ------------------------------------------------------------------ loop

    async def run(self, on_publish: Callable[[Published], None]) -> None:
        """Forecast whenever due, forever (cancel the task to stop); call ``on_publish`` with each result."""
        while True:
            due = self._due(time.monotonic())
            if due is not None:
                try:
                    result = await anyio.to_thread.run_sync(self.work, due)
                except (ValueError, RuntimeError) as exc:  # non-finite output, a dead worker: keep the last result
                    self._failed(exc)
                    result = None
                if result is not None:
                    self._failures = 0
                    self.latest = result
                    on_publish(result)
            await asyncio.sleep(self.poll_seconds)

    def _failed(self, exc: Exception) -> None:
        """Count a failed forecast and retry the same data later, backing off up to a minute."""
        self.errors += 1
        self._failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._forecast_generation = -1
        self._retry_at = time.monotonic() + min(RETRY_MAX_SECONDS, 2.0 ** (self._failures - 1))
        log.exception("forecast failed; serving the previous result")

    def _due(self, now: float) -> bool | None:
        """Return ``True`` to forecast, ``False`` to refresh the fleet figures only, ``None`` to wait."""
        generation, step = self.ingestor.generation, self.ingestor.newest_step
        unforecast = generation != self._forecast_generation
        since = now - self._forecast_at
        if self.interval is not None:
            forecast = unforecast and since >= self.interval
        else:
            forecast = unforecast and (step > self._forecast_step or since >= REFRESH_SECONDS)
        # Rest at least as long as the last forecast took: the model never takes more than half
        # a core from the request path, however fast the steps arrive (a replay, a benchmark).
        if forecast and since >= 2 * self._busy_seconds and now >= self._retry_at:
            return True
        refresh = generation != self._seen and now - self._refresh_at >= REFRESH_SECONDS
        return False if refresh else None

    def work(self, forecast: bool) -> Published | None:
        """Copy the windows, refresh the fleet figures and, when ``forecast``, predict (in a worker thread)."""
        started = time.monotonic()
        state, generation = self.ingestor.copy_state()
        histories = WindowStore.from_state(state).histories()
        self.ingestor.stats = FleetStats.of(histories, self.min_history)
        self._seen, self._refresh_at = generation, started
        if not forecast:
            return None
        self._forecast_generation = generation
        if not histories:
            return None  # nothing to forecast yet: the interval starts with the first data
        self._forecast_at, self._forecast_step = started, int(state["last"].max(initial=-1))
        with self._backend_lock:
            result = self.backend.forecast(state, self.predictions + 1)
        self.predictions += 1
        self.last_seconds = time.monotonic() - started
        self._busy_seconds = result.seconds  # the model's time, not a worker's start-up
        return result

    def swap(self, backend: Backend, min_history: int, *, carry_alerts: bool) -> tuple[Backend, int]:
        """Forecast with ``backend`` from now on, between two forecasts (blocks while one runs).

        Args:
            backend: The new backend, its model already loaded.
            min_history: Steps a server needs before the new model forecasts it.
            carry_alerts: Hand the active alerts and their hysteresis to the new backend, so a
                reload neither drops nor re-raises them.

        Returns:
            The previous backend (the caller closes it) and how many alerts were carried over.
        """
        with self._backend_lock:
            alerts = self.backend.export_alerts() if carry_alerts else []
            if alerts:
                backend.restore_alerts(alerts)
            previous, self.backend = self.backend, backend
            self.min_history = min_history
            self._forecast_generation = -1  # forecast again at once, with the new model
            self._busy_seconds = 0.0
        return previous, len(alerts)

    def warmup(self) -> WarmupStatus:
        """Return the live windows' warm-up progress (a short lock)."""
        with self.ingestor.lock:
            histories = self.ingestor.store.histories()
        need = self.min_history
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
