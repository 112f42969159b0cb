"""The forecast worker: a child process that runs the model, so requests never wait behind it.

In one process the model's Python-level work competes with the request handlers for the GIL
and for the cores, which puts the forecast's seconds into the tail of ``POST /feed/data``. The
worker is a separate, lower-priority (``nice``) process: it loads the bundle itself, owns the
engine and the alerts' hysteresis, and for each request receives a copy of the windows and
returns the encoded documents (:class:`~workbench.service.documents.Published`).

The worker is ``python -m workbench.service.worker FD``: a fresh interpreter (nothing of the
daemon's threads, locks or ``__main__`` carried over) that reads its :class:`WorkerConfig` as
JSON on stdin and talks over one end of a socket pair, in plain frames (a
:class:`multiprocessing.connection.Connection`): a JSON header, then one raw buffer per array
or document; nothing is pickled. The worker ignores SIGINT (a Ctrl-C to
the daemon's process group is the daemon's to handle) and exits when the daemon closes the
pipe, including when the daemon dies. A worker that dies is started again on the next forecast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from workbench.service.documents import Published
from workbench.service.horizon_points import HorizonPoints
from workbench.service.reads import reads_from_frames, reads_to_frames

NICE = 10  # under CPU contention the request path gets ~90 % of a core, the model the rest
START_TIMEOUT_SECONDS = 300.0  # importing torch and loading a bundle on a cold, loaded box
DEFAULT_REPLY_SECONDS = 120.0  # a forecast of 100,000 servers on 2 CPU cores takes well under this
log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The forecast worker failed to start, died, or could not forecast."""


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs to build its engine (plain values: they cross the process boundary).

    Attributes:
        bundle: Bundle folder.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``None`` (CUDA when present).
        batch_size: Servers per network call (``None``: the engine's default for the device).
        max_gap_steps: Longest gap carried forward.
        max_servers: Most servers held.
        threads: Torch threads (``None``: every core; the worker is niced).
        thresholds: Alert levels as :meth:`Thresholds.to_dict` gives them.
        metadata: Fixed metadata keys of the documents.
        alert_rule: Name of the alert rule (resolved by the daemon).
    """

    bundle: str
    device: str | None
    batch_size: int | None
    max_gap_steps: int
    max_servers: int
    threads: int | None
    thresholds: dict[str, Any]
    metadata: dict[str, Any]
    alert_rule: str = "band_edge"


def send_frames(conn: Connection, header: Mapping[str, Any], blobs: Mapping[str, Any]) -> None:
    """Send a JSON header naming each blob (dtype and shape for arrays), then the blobs' raw bytes."""
    parts: list[Any] = []
    described: list[list[Any]] = []
    for name, blob in blobs.items():
        if isinstance(blob, np.ndarray):
            array = np.ascontiguousarray(blob)
            described.append([name, array.dtype.str, list(array.shape)])
            parts.append(array)
        else:
            described.append([name, None, None])
            parts.append(blob)
    conn.send_bytes(json.dumps({**header, "blobs": described}).encode())
    for part in parts:
        conn.send_bytes(part.reshape(-1).view(np.uint8).data if isinstance(part, np.ndarray) else part)


def recv_frames(conn: Connection) -> tuple[dict[str, Any], dict[str, Any]]:
    """Receive what :func:`send_frames` sent: the header and ``{name: array or bytes}`` (arrays read-only).

    Raises:
        EOFError: when the other end closed the pipe.
    """
    header = json.loads(conn.recv_bytes())
    blobs: dict[str, Any] = {}
    for name, dtype, shape in header.pop("blobs"):
        data = conn.recv_bytes()
        blobs[name] = data if dtype is None else np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)  # read-only
    return header, blobs


class ForecastProcess:
    """The daemon's handle on its forecast worker; one forecast at a time.

    Args:
        config: What the worker builds.
        reply_seconds: Longest wait for one forecast; a worker silent for longer (hung, stopped,
            swapping) is killed and started again, and counted in :attr:`hangs`.
    """

    def __init__(self, config: WorkerConfig, reply_seconds: float = DEFAULT_REPLY_SECONDS) -> None:
        self.config = config
        self.reply_seconds = reply_seconds
        self.hangs = 0
        self._busy_since: float | None = None
        self.starts = 0
        self._lock = threading.Lock()
        self._ready = False
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def restarts(self) -> int:
        """Starts after the first (each follows a worker's death)."""
        return max(0, self.starts - 1)

    @property
    def pid(self) -> int | None:
        """The worker's process id (``None`` while none runs)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the worker without waiting for it to load the model (idempotent while it lives)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._stop()
        mine, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                stdin=subprocess.PIPE,
                pass_fds=[theirs.fileno()],
            )
        assert self._process.stdin is not None
        with self._process.stdin as stdin:
            stdin.write(json.dumps(vars(self.config)).encode())
        self._conn = Connection(mine.detach())
        self.starts += 1
        self._ready = False

    def forecast(self, state: Mapping[str, np.ndarray], version: int) -> Published:
        """Forecast a copy of the windows in the worker (blocking; run it off the event loop).

        Raises:
            WorkerError: when the worker cannot start, dies, or reports an error (it is
                started again on the next call after a death).
        """
        with self._lock:
            self._start()
            assert self._conn is not None
            try:
                if not self._ready:
                    self._await_ready()
                send_frames(self._conn, {"op": "forecast", "version": version}, dict(state))
                self._busy_since = time.monotonic()
                if not self._conn.poll(self.reply_seconds):
                    self._kill()
                    self.hangs += 1
                    raise WorkerError(
                        f"the forecast worker did not answer in {self.reply_seconds:g} s; killed, it starts again"
                    )
                header, blobs = recv_frames(self._conn)
            except (EOFError, OSError) as exc:
                code = self._process.poll() if self._process is not None else None
                self._stop()
                raise WorkerError(f"the forecast worker died (exit code {code}): {exc or type(exc).__name__}") from exc
            finally:
                self._busy_since = None
        if "error" in header:
            raise WorkerError(header["error"])
        return Published(
            version=int(header["version"]),
            body=blobs["body"],
            alerts_body=blobs["alerts_body"],
            summary=header["summary"],
            metrics=blobs["metrics"],
            seconds=float(header["seconds"]),
            drift=header.get("drift"),
            points=HorizonPoints.from_wire(header.get("points"), blobs),
            reads=reads_from_frames(header.get("reads") or {}, blobs, blobs["body"]),
        )

    def load(self) -> None:
        """Start the worker and wait until it has loaded its model.

        Raises:
            WorkerError: when it cannot start or load the bundle.
        """
        with self._lock:
            self._start()
            try:
                if not self._ready:
                    self._await_ready()
            except (EOFError, OSError) as exc:
                self._stop()
                raise WorkerError(f"the forecast worker died while loading: {exc or type(exc).__name__}") from exc

    def export_alerts(self) -> list[dict[str, Any]]:
        """Return the worker's active alerts with their hysteresis (empty when it is not running)."""
        with self._lock:
            if self._conn is None or not self._ready:
                return []
            return list(self._call({"op": "export_alerts"})["alerts"])

    def restore_alerts(self, exported: list[dict[str, Any]]) -> None:
        """Hand the worker alerts another one exported (call :meth:`load` first)."""
        with self._lock:
            if self._conn is None or not self._ready:
                raise WorkerError("the forecast worker is not running")
            self._call({"op": "restore_alerts", "alerts": exported})

    def _call(self, header: dict[str, Any]) -> dict[str, Any]:
        """Send a small request and return the answer's header (under the lock)."""
        assert self._conn is not None
        try:
            send_frames(self._conn, header, {})
            if not self._conn.poll(self.reply_seconds):
                self._kill()
                raise WorkerError(f"the forecast worker did not answer {header['op']} in {self.reply_seconds:g} s")
            answer, _ = recv_frames(self._conn)
        except (EOFError, OSError) as exc:
            self._stop()
            raise WorkerError(f"the forecast worker died: {exc or type(exc).__name__}") from exc
        if "error" in answer:
            raise WorkerError(answer["error"])
        return answer

    def stalled(self) -> str | None:
        """Say so when the current forecast has waited longer than :attr:`reply_seconds` (else ``None``)."""
        since = self._busy_since
        if since is None or time.monotonic() - since <= self.reply_seconds:
            return None
        return f"the forecast worker has not answered for {time.monotonic() - since:.0f} s"

    def _kill(self) -> None:
        """Kill a worker that does not answer (SIGKILL works on a stopped process too)."""
        conn, process, self._conn, self._process = self._conn, self._process, None, None
        if conn is not None:
            conn.close()
        if process is not None:
            process.kill()
            process.wait()

    def _await_ready(self) -> None:
        assert self._conn is not None
        if not self._conn.poll(START_TIMEOUT_SECONDS):
            raise WorkerError(f"the forecast worker did not load the model in {START_TIMEOUT_SECONDS:.0f} s")
        header, _ = recv_frames(self._conn)
        if "error" in header:
            self._stop()
            raise WorkerError(f"the forecast worker could not start: {header['error']}")
        self._ready = True

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit and wait for it (terminated after ``timeout`` seconds)."""
        with self._lock:
            self._stop(timeout)

    def _stop(self, timeout: float = 10.0) -> None:
        conn, process, self._conn, self._process = self._conn, self._process, None, None
        if conn is not None:
            try:
                send_frames(conn, {"op": "close"}, {})
            except OSError:
                pass
            conn.close()
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()  # a stopped or hung worker ignores SIGTERM
                process.wait()


def _main(conn: Connection) -> None:
    """The worker's loop: load the model, then answer forecast requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE)
    try:
        forecaster = _build(WorkerConfig(**json.loads(sys.stdin.buffer.read())))
    except Exception as exc:  # reported to the daemon, which names it in its error
        send_frames(conn, {"error": f"{type(exc).__name__}: {exc}"}, {})
        return
    send_frames(conn, {"ready": True}, {})
    while True:
        try:
            header, state = recv_frames(conn)
        except (EOFError, OSError):
            return  # the daemon closed the pipe or died
        op = header.get("op")
        if op in ("export_alerts", "restore_alerts"):
            _answer_alerts(conn, forecaster, header)
            continue
        if op != "forecast":
            return
        try:
            published = forecaster.forecast(state, int(header["version"]))
        except Exception as exc:  # one bad forecast must not end the worker
            send_frames(conn, {"error": f"{type(exc).__name__}: {exc}"}, {})
            continue
        reply = {"version": published.version, "seconds": published.seconds, "summary": published.summary}
        reply["drift"] = published.drift
        blobs = {"body": published.body, "alerts_body": published.alerts_body, "metrics": published.metrics}
        if published.points is not None:  # the history archive's figures: raw float32, not JSON
            reply["points"], blobs = published.points.header(), {**blobs, **published.points.blobs()}
        reply["reads"], reads_blobs = reads_to_frames(published.reads)  # where each server lies in body
        blobs.update(reads_blobs)
        try:
            send_frames(conn, reply, blobs)
        except OSError:
            return


def _answer_alerts(conn: Connection, forecaster: Any, header: Mapping[str, Any]) -> None:
    """Export or restore the alert tracker's state (a hot reload hands it from one worker to the next)."""
    try:
        if header["op"] == "export_alerts":
            reply: dict[str, Any] = {"alerts": forecaster.export_alerts()}
        else:
            forecaster.restore_alerts(header["alerts"])
            reply = {"ok": True}
    except Exception as exc:  # reported; the worker goes on forecasting
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    send_frames(conn, reply, {})


def _build(config: WorkerConfig) -> Any:
    """Load the bundle and build the worker's :class:`~workbench.service.documents.Forecaster`."""
    import torch

    from workbench.drift import DriftMonitor, read_drift_reference
    from workbench.inference.engine import Engine
    from workbench.model.bundle import load_bundle
    from workbench.service.documents import Documents, Forecaster
    from workbench.thresholds import Thresholds

    started = time.monotonic()
    torch.set_num_threads(config.threads or max(1, os.cpu_count() or 1))
    bundle = load_bundle(Path(config.bundle), device=config.device)
    engine = Engine(
        bundle, batch_size=config.batch_size, max_gap_steps=config.max_gap_steps, max_servers=config.max_servers
    )
    thresholds = Thresholds.from_dict(config.thresholds)
    documents = Documents(
        tuple(bundle.targets), engine.spec.horizon, thresholds, config.metadata, bundle.incidents, config.alert_rule
    )
    drift = DriftMonitor(documents.targets, read_drift_reference(Path(config.bundle)))
    log.info("forecast worker ready in %.1f s (pid %d)", time.monotonic() - started, os.getpid())
    return Forecaster(engine, documents, drift)


if __name__ == "__main__":
    _main(Connection(int(sys.argv[1])))
