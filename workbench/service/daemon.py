"""The inference daemon's parts and their lifecycle: recover, predict, snapshot, shut down.

Building a :class:`InferenceDaemon` recovers the windows from the state folder (snapshot plus
log) before anything is served, so a bad state folder fails the start with one clear error.
:meth:`InferenceDaemon.lifespan` runs the background predictor and the snapshot schedule while
the web server runs, and takes a final snapshot on a graceful shutdown (SIGINT/SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from fastapi import FastAPI

from workbench import contract as c
from workbench.alert_rules import resolve_rule
from workbench.drift import DriftMonitor, DriftReference, read_drift_reference
from workbench.errors import BundleError, ConfigError, StateError
from workbench.inference.window import WindowStore
from workbench.manifest import BundleInfo, read_info
from workbench.service.alertmanager import AlertmanagerPusher
from workbench.service.archive import Archive
from workbench.service.common import Hub
from workbench.service.documents import Documents, Forecaster, Published
from workbench.service.history_api import ArchiveCollector
from workbench.service.ingest import Ingestor
from workbench.service.predictor import Backend, Predictor
from workbench.service.prom import make_registry
from workbench.service.reload import BundleSlot, ReloadRefused, shape_differences
from workbench.service.settings import InferenceSettings
from workbench.service.state import Recovered, StateDir
from workbench.service.worker import ForecastProcess, WorkerConfig, WorkerError
from workbench.thresholds import Thresholds

if TYPE_CHECKING:
    from workbench.inference.engine import Engine
    from workbench.model.bundle import Bundle

SERVICE_NAME = "workbench-inference"
IDLE_CHECK_SECONDS = 5.0
log = logging.getLogger(__name__)


class InferenceDaemon:
    """Everything the inference daemon holds: engine, live windows, log, predictor, WebSocket hub.

    Args:
        settings: Validated daemon settings.
        bundle: The loaded model.
        thresholds: Alert levels.

    Raises:
        StateError: when the state folder belongs to another contract or bundle, is damaged,
            or is used by another daemon.
    """

    def __init__(self, settings: InferenceSettings, bundle: BundleInfo | Bundle, thresholds: Thresholds) -> None:
        self.settings = settings
        self.slot = BundleSlot(bundle if isinstance(bundle, BundleInfo) else bundle.info())
        self._reload_lock = threading.Lock()
        self.thresholds = thresholds
        self.alert_rule = resolve_rule(settings.alert_rule, self.bundle.incidents)  # fails before any state is opened
        self.archive = _open_archive(settings)  # before the state folder: a bad history folder fails the start
        # With a worker process only the worker loads the network; this process holds the windows.
        self.engine = None if settings.forecast_worker == "process" else _thread_engine(settings, bundle)
        self.started = time.time()
        self.state_dir: StateDir | None = None
        if settings.state_dir is not None:
            self.state_dir = StateDir(settings.state_dir, self.bundle.identity(), fsync=settings.fsync)
            try:
                self.recovered, journal = self.state_dir.recover(self._empty_store)
            except BaseException:
                self.state_dir.close()
                raise
        else:
            self.recovered, journal = Recovered(self._empty_store()), None
        store = self.recovered.store
        store.max_gap_steps, store.max_servers = settings.max_gap_steps, settings.max_servers
        self.ingestor = Ingestor(
            store,
            journal,
            tick_count=self.recovered.tick_count,
            records=self.recovered.records,
            max_future_seconds=settings.max_future_seconds,
            on_accepted=self.archive.add_metrics if self.archive is not None else None,
        )
        shape = self.bundle.manifest
        documents = self._documents(self.bundle, self.alert_rule)
        if self.bundle.incidents is None:
            log.warning(
                "%s has no incident calibration: probabilities are reported as uncalibrated, alerts use the %s rule",
                self.bundle.path,
                self.alert_rule,
            )
        backend: Backend
        if self.engine is None:
            self.worker: ForecastProcess | None = ForecastProcess(
                self._worker_config(self.bundle, self.alert_rule), settings.worker_reply_seconds
            )
            backend = self.worker
        else:
            self.worker, backend = None, Forecaster(self.engine, documents, _drift_monitor(self.bundle))
        self.predictor = Predictor(
            backend,
            self.ingestor,
            documents,
            shape.min_encoder_length,
            interval=settings.interval,
            poll_seconds=settings.poll_seconds,
        )
        self.hub = Hub()
        self.alertmanager = self._alertmanager()
        self.registry = make_registry(self.predictor, self.ingestor, self.alertmanager)
        if self.archive is not None:
            self.registry.register(ArchiveCollector(self.archive))
        self.snapshots = 0
        self.snapshot_failures = 0
        self.snapshot_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if self.recovered.replayed_batches or self.recovered.snapshot_segment is not None:
            log.info(
                "recovered %d servers, %d batches (%d replayed from the log)",
                len(store.servers),
                self.recovered.tick_count,
                self.recovered.replayed_batches,
            )

    @property
    def bundle(self) -> BundleInfo:
        """The bundle serving now (a reload replaces it)."""
        return self.slot.info

    def _documents(self, info: BundleInfo, rule: str) -> Documents:
        shape = info.manifest
        return Documents(
            shape.targets, shape.horizon, self.thresholds, self._metadata(info, rule), info.incidents, rule
        )

    def _empty_store(self) -> WindowStore:
        s, shape = self.settings, self.bundle.manifest
        return WindowStore(
            shape.max_encoder_length, shape.targets, max_gap_steps=s.max_gap_steps, max_servers=s.max_servers
        )

    def _alertmanager(self) -> AlertmanagerPusher | None:
        s = self.settings
        if not s.alertmanager:
            return None
        period = s.interval if s.interval is not None else float(c.STEP_SECONDS)
        link = f"http://{s.host}:{s.port}/alerts/active"
        return AlertmanagerPusher(s.alertmanager, period_seconds=period, generator_url=link)

    def _published(self, result: Published) -> None:
        """Push a new result to the WebSocket clients and its alerts to Alertmanager (neither waits)."""
        self.hub.publish(result)
        if self.archive is not None:  # queued: the archive's thread builds the rows
            self.archive.add_result(result.points, result.summary["alerts"], result.summary["metadata"]["data_time"])
        if self.alertmanager is not None:
            self.alertmanager.submit(result.summary["alerts"])

    def _worker_config(self, info: BundleInfo, rule: str) -> WorkerConfig:
        s = self.settings
        return WorkerConfig(
            bundle=str(info.path),
            device=self.settings.device,
            batch_size=s.batch_size,
            max_gap_steps=s.max_gap_steps,
            max_servers=s.max_servers,
            threads=s.threads,
            thresholds=self.thresholds.to_dict(),
            metadata=self._metadata(info, rule),
            alert_rule=rule,
        )

    def _device(self) -> str:
        """Where forecasts run: the engine's device, or the worker's (``--device``; ``auto``: CUDA when present)."""
        if self.engine is not None:
            return str(self.engine.device)
        return self.settings.device or "auto"  # the worker's choice: CUDA when its torch sees a GPU

    def _metadata(self, info: BundleInfo, rule: str) -> dict[str, Any]:
        return {
            "model_type": "TFT",
            "bundle": info.path.name if info.path is not None else None,
            "bundle_sha256": info.digest,
            "contract_version": c.CONTRACT_VERSION,
            "horizon_steps": info.manifest.horizon,
            "device": self._device(),
            "targets": list(info.targets),
            "forecast_worker": self.settings.forecast_worker,
            "alert_rule": rule,
            "probabilities": "calibrated" if info.incidents is not None else "uncalibrated",
            "thresholds": self.thresholds.to_dict(),  # the levels it alerts on, for the dashboard's lines
        }

    @property
    def running(self) -> bool:
        """Whether the background predictor is alive."""
        return bool(self._tasks) and not self._tasks[0].done()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Run the predictor and the snapshot schedule while the app serves; snapshot on the way out."""
        if self.worker is not None:
            self.worker.start()  # loads the model while the first data arrives
        if self.archive is not None:
            self.archive.start()
        if self.alertmanager is not None:
            self.alertmanager.start()
        self._tasks = [asyncio.create_task(self.predictor.run(self._published), name="predictor")]
        if self.state_dir is not None:
            self._tasks.append(asyncio.create_task(self._snapshot_loop(), name="snapshots"))
        self._tasks.append(asyncio.create_task(self._idle_loop(), name="idle eviction"))
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.hub.close()
            await anyio.to_thread.run_sync(self.close)

    async def _snapshot_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.settings.snapshot_seconds))
            journal = self.ingestor.journal
            big = journal is not None and journal.segment_bytes >= self.settings.snapshot_log_bytes
            if big or time.monotonic() - last >= self.settings.snapshot_seconds:
                try:
                    await anyio.to_thread.run_sync(self.snapshot)
                except (OSError, StateError) as exc:  # a full disk: keep logging, say so, try again later
                    self.snapshot_error = f"snapshot failed: {exc}"
                    self.snapshot_failures += 1
                    log.error("%s; the log keeps every batch, next try in %.0f s", self.snapshot_error,
                              self.settings.snapshot_seconds)  # fmt: skip
                else:
                    self.snapshot_error = None
                last = time.monotonic()

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            evicted = await anyio.to_thread.run_sync(self.ingestor.evict_idle, self.settings.idle_seconds)
            if evicted:
                log.info("evicted %d servers silent for %.0f s: %s", len(evicted), self.settings.idle_seconds,
                         ", ".join(evicted[:10]) + (" ..." if len(evicted) > 10 else ""))  # fmt: skip

    def snapshot(self) -> None:
        """Snapshot the windows now (a short lock, then the write without it)."""
        if self.state_dir is None:
            return
        started = self.ingestor.start_snapshot()
        if started is not None:
            path = self.state_dir.write_snapshot(*started)
            self.snapshots += 1
            log.info("snapshot %s written", path.name)

    def problems(self) -> list[str]:
        """What makes the daemon unhealthy now (empty: healthy)."""
        out = []
        if not self.running:
            out.append("the background predictor is not running")
        if self.ingestor.write_error:
            out.append(self.ingestor.write_error)
        if self.archive is not None and (trouble := self.archive.problem()):
            out.append(trouble)
        if self.snapshot_error:
            out.append(self.snapshot_error)
        if self.worker is not None and (stall := self.worker.stalled()):
            out.append(stall)
        return out

    def close(self) -> None:
        """Take a final snapshot, close the log, release the state folder, then stop the worker (idempotent).

        The snapshot comes first: a supervisor that kills after a grace period (Docker's 10 s)
        must not find it skipped behind a worker still finishing a forecast.
        """
        try:
            if self.state_dir is not None:
                try:
                    self.snapshot()
                finally:
                    if self.ingestor.journal is not None:
                        self.ingestor.journal.close()
                    self.state_dir.close()
                    self.state_dir = None
        finally:
            if self.worker is not None:
                self.worker.close(timeout=3.0)
            if self.alertmanager is not None:
                self.alertmanager.close()
            if self.archive is not None:
                self.archive.close()  # writes what is buffered

    def reload(self, path: Path) -> dict[str, Any]:
        """Serve the bundle at ``path`` from the next forecast on, without a restart (blocking).

        The new model is loaded while the old one keeps serving, then the two are swapped
        between forecasts with the active alerts carried over; feeding goes on throughout and
        no window is touched.

        Raises:
            ReloadRefused: another reload runs, the bundle is unusable or does not fit the running
                windows or alert rule, or it failed to load; the old model keeps serving.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadRefused(409, "another reload is running; try again when it has finished")
        started = time.monotonic()
        try:
            info, rule = self._check_reload(path)
            backend, engine, worker = self._load_backend(info, rule)
            previous, carried = self.predictor.swap(
                backend, info.manifest.min_encoder_length, carry_alerts=rule == self.alert_rule
            )
            self.engine, self.worker, self.alert_rule = engine, worker, rule
            previous.close(timeout=3.0)  # the old worker process, or the old engine's threads
            if self.state_dir is not None:
                self.state_dir.header["bundle"] = info.identity()  # the next snapshot and log segment say so
            outcome = self.slot.swapped(info, time.monotonic() - started, carried)
            log.info("reloaded %s in %.1f s (%d alerts carried over)", path, outcome["seconds"], carried)
            return {"status": "reloaded", "reload": outcome, "bundle": self.slot.to_json(private=False)}
        except ReloadRefused as refused:
            self.slot.failed(refused, time.monotonic() - started)
            log.warning("reload of %s refused: %s %s", path, refused.detail, "; ".join(refused.differences))
            raise
        finally:
            self._reload_lock.release()

    def _check_reload(self, path: Path) -> tuple[BundleInfo, str]:
        try:
            info = read_info(path)
        except BundleError as exc:
            raise ReloadRefused(422, f"not a usable bundle: {exc}") from exc
        differences = shape_differences(self.bundle.manifest, info.manifest)
        if differences:
            raise ReloadRefused(409, f"{path} does not fit the running windows", differences)
        try:
            rule = resolve_rule(self.settings.alert_rule, info.incidents)
        except ConfigError as exc:
            raise ReloadRefused(409, f"{path} does not fit the alert rule: {exc}") from exc
        return info, rule

    def _load_backend(self, info: BundleInfo, rule: str) -> tuple[Backend, Engine | None, ForecastProcess | None]:
        """Load the network where forecasts run: a new worker process, or this process."""
        if self.worker is None:
            try:
                engine = _thread_engine(self.settings, info)
            except (BundleError, OSError, RuntimeError, ValueError) as exc:
                raise ReloadRefused(422, f"{info.path} failed to load: {exc}") from exc
            return Forecaster(engine, self._documents(info, rule), _drift_monitor(info)), engine, None
        worker = ForecastProcess(self._worker_config(info, rule), self.settings.worker_reply_seconds)
        try:
            worker.load()
        except WorkerError as exc:
            worker.close(timeout=3.0)
            raise ReloadRefused(422, f"{info.path} failed to load: {exc}") from exc
        return worker, None, worker

    def history(self, server: str, steps: int) -> dict[str, Any] | None:
        """Return the ``GET /history/{server}`` document, or ``None`` for an unknown server.

        The last ``steps`` steps (fewer when the server has less history) of every metric the
        windows hold, read under the ingest lock (a copy of one server's row), with gaps
        carried forward as the model reads them; a metric without any value is ``null``.
        """
        with self.ingestor.lock:
            store = self.ingestor.store
            if server not in store.servers:
                return None
            windows = store.windows([server], min(steps, store.capacity))
        length, last = int(windows.lengths[0]), int(windows.last_step[0])
        values = windows.values[0, :length]
        first = last - length + 1
        return {
            "server": server,
            "profile": windows.profiles[0],
            "timestamps": [c.step_time(first + k).isoformat() for k in range(length)],
            "metrics": {
                metric: [None if np.isnan(v) else round(float(v), 4) for v in values[:, j]]
                for j, metric in enumerate(store.metrics)
            },
            "forecast_start": c.step_time(last + 1).isoformat(),
        }

    def status(self, private: bool = True) -> dict[str, Any]:
        """Return the ``GET /status`` document (a short lock to read the live warm-up).

        Args:
            private: Include the state folder's path and the worker's pid (a reader with the key).
        """
        warmup = self.predictor.warmup()
        journal = self.ingestor.journal
        env = self.predictor.latest.summary["environment"]
        return {
            "running": self.running,
            "tick_count": self.ingestor.tick_count,
            "window_size": sum(warmup.servers.values()),
            "warmup": warmup.to_json(),
            "fleet": {
                "total_servers": warmup.total,
                "ready_servers": warmup.ready,
                "warming_up_servers": warmup.total - warmup.ready,
                "fleet_status": f"{warmup.ready}/{warmup.total} servers ready",
                "fleet_health": env["fleet_health"],
            },
            "bundle": self.slot.to_json(private),
            "predictor": self.predictor.status(),
            "forecast_worker": {
                "mode": self.settings.forecast_worker,
                "pid": self.worker.pid if self.worker is not None and private else None,
                "restarts": self.worker.restarts if self.worker is not None else 0,
                "hangs": self.worker.hangs if self.worker is not None else 0,
            },
            "ingest": {**vars(self.ingestor.counters), "records_total": self.ingestor.records},
            "state": {
                "state_dir": str(self.settings.state_dir) if self.settings.state_dir and private else None,
                "persisted": self.settings.state_dir is not None,
                "segment": journal.segment if journal is not None else None,
                "segment_bytes": journal.segment_bytes if journal is not None else None,
                "fsync": self.settings.fsync,
                "snapshots_written": self.snapshots,
                "snapshot_failures": self.snapshot_failures,
                "write_error": self.ingestor.write_error,
                "snapshot_error": self.snapshot_error,
                "recovered_batches": self.recovered.tick_count,
                "replayed_batches": self.recovered.replayed_batches,
                "recovery": self.recovered.to_json(),
            },
            "history": self.archive.status(private) if self.archive is not None else {"enabled": False},
            "websocket_clients": self.hub.subscribers,
            "uptime_seconds": round(time.time() - self.started, 1),
        }


def _drift_monitor(info: BundleInfo) -> DriftMonitor:
    """A drift monitor with the bundle's reference (``drift.json``), when it has one."""
    reference = read_drift_reference(info.path) if info.path is not None else DriftReference()
    return DriftMonitor(info.targets, reference)


def _thread_engine(settings: InferenceSettings, bundle: BundleInfo | Bundle) -> Engine:
    """Load the network into this process (``forecast_worker="thread"``) and build its engine."""
    from workbench.inference.engine import Engine
    from workbench.model.bundle import Bundle, load_bundle

    if not isinstance(bundle, Bundle):
        if bundle.path is None:
            raise StateError("a thread forecast worker needs a bundle folder or a loaded bundle")
        bundle = load_bundle(bundle.path, device=settings.device)
    gaps, servers = settings.max_gap_steps, settings.max_servers
    return Engine(bundle, batch_size=settings.batch_size, max_gap_steps=gaps, max_servers=servers)


def _open_archive(settings: InferenceSettings) -> Archive | None:
    """The history archive of ``settings.history_dir`` (``None``: no history kept)."""
    if settings.history_dir is None:
        return None
    return Archive(
        settings.history_dir,
        retention_days=settings.history_days,
        flush_seconds=settings.history_flush_seconds,
        fsync=settings.fsync,
    )
