"""Hot reload on real ``workbench serve`` processes (forecast worker process): under feed, and kill -9 mid-reload."""

import os
import signal
import threading
import time

import httpx
import pytest
from test_service_e2e import GRACEFUL, exited, free_port, serve, stop, tft_forecast, until
from test_service_reload import retrained

from workbench.manifest import weights_digest
from workbench.service.generator_app import encode_step
from workbench.simulator import FleetStream

pytestmark = pytest.mark.slow
SERVERS = 5


def children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (the forecast workers)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return out


def served_by(base: str, sha: str):
    doc = tft_forecast(base, SERVERS)
    return doc if doc and doc["metadata"]["bundle_sha256"] == sha else None


class Feeder(threading.Thread):
    """Posts one step of the fleet after another and counts what the daemon acknowledged."""

    def __init__(self, base: str, steps: int, pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        stream = FleetStream(SERVERS, seed=11)
        self.bodies = [encode_step(next(stream)) for _ in range(steps)]
        self.base, self.pause = base, pause
        self.acknowledged = 0
        self.refused: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            for body in self.bodies:
                r = client.post(self.base + "/feed/data", content=body)
                if r.status_code == 200:
                    self.acknowledged += r.json()["records_added"]
                else:
                    self.refused.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(self.pause)


def test_reload_under_feed_then_kill_9_during_a_reload(tmp_path, tiny_bundle_dir):
    """One daemon's life: a reload under feed loses and refuses nothing; a kill -9 during a second
    reload leaves no worker behind, and the restart serves a model with every acknowledged record."""
    new = retrained(tiny_bundle_dir, tmp_path / "new")
    old_sha, new_sha = (weights_digest(b / "model.safetensors") for b in (tiny_bundle_dir, new))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state, log = tmp_path / "state", tmp_path / "serve.log"
    daemon = serve(tiny_bundle_dir, state, port, log)
    try:
        until(lambda: httpx.get(base + "/health").json()["running"], 120, "the inference daemon")
        first = Feeder(base, 60, pause=0.0)
        first.run()
        until(lambda: served_by(base, old_sha), 120, "the old model")
        old_worker = httpx.get(base + "/status").json()["forecast_worker"]["pid"]
        feeder = Feeder(base, 300)
        feeder.bodies = feeder.bodies[60:]
        feeder.start()
        answer = httpx.post(base + "/admin/reload", json={"bundle": str(new)}, timeout=300)
        assert answer.status_code == 200, answer.text
        feeder.join(120)
        assert not feeder.is_alive() and feeder.refused == []
        until(lambda: served_by(base, new_sha), 120, "forecasts of the new model")
        status = httpx.get(base + "/status").json()
        acknowledged = first.acknowledged + feeder.acknowledged
        assert status["ingest"]["records_total"] == acknowledged == SERVERS * 300
        assert status["bundle"]["sha256"] == new_sha and status["bundle"]["reloads"] == 1
        assert status["forecast_worker"]["pid"] != old_worker and exited(old_worker)
        assert status["predictor"]["errors"] == 0

        reloading = threading.Thread(
            target=lambda: httpx.post(base + "/admin/reload", json={"bundle": str(tiny_bundle_dir)}, timeout=300),
            daemon=True,
        )
        reloading.start()
        until(lambda: len(children(daemon.pid)) >= 2, 60, "the next worker loading beside the serving one")
        workers = children(daemon.pid)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        until(lambda: all(exited(pid) for pid in workers), 60, "the orphaned workers to exit")
    finally:
        stop(daemon)
    daemon = serve(tiny_bundle_dir, state, port, log)  # the restart serves what --bundle says
    try:
        until(lambda: httpx.get(base + "/health").json()["running"], 120, "the restarted daemon")
        doc = until(lambda: served_by(base, old_sha), 120, "forecasts after the restart")
        assert doc["metadata"]["servers_forecast"] == SERVERS
        assert httpx.get(base + "/status").json()["ingest"]["records_total"] == acknowledged
    finally:
        assert stop(daemon) in GRACEFUL
