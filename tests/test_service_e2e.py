"""Real daemons on loopback: ``workbench stream`` into ``workbench serve``, and kill -9 then restart."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from workbench.service.generator_app import encode_step
from workbench.simulator import FleetStream

pytestmark = pytest.mark.slow
KEY_ENV = "WORKBENCH_TEST_KEY"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, KEY_ENV: "s3cret", "PYTHONWARNINGS": "ignore"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "workbench.cli", *args], stdout=out, stderr=out, env=env)


def serve(bundle: Path, state: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    args = ["serve", "--bundle", str(bundle), "--port", str(port), "--state-dir", str(state), "--device", "cpu"]
    return start([*args, "--log-level", "warning", *extra], log)


GRACEFUL = (0,)  # a stop asked for by SIGINT or SIGTERM is a clean exit


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def exited(pid: int) -> bool:
    """Whether a process is gone or a zombie (an orphan may wait for a PID 1 that never reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def tft_forecast(base: str, servers: int):
    doc = httpx.get(base + "/predictions/current", timeout=10).json()
    sources = {m["source"] for entry in doc["predictions"].values() for m in entry.values()}
    return doc if len(doc["predictions"]) == servers and sources == {"tft"} else None


def test_stream_into_serve_until_tft_forecasts(tmp_path, tiny_bundle_dir):
    port, gen_port = free_port(), free_port()
    base, gen = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{gen_port}"
    daemon = serve(tiny_bundle_dir, tmp_path / "state", port, tmp_path / "serve.log", "--api-key-env", KEY_ENV)
    try:
        until(lambda: httpx.get(base + "/health").json()["running"], 90, "the inference daemon")
        args = ["stream", "--target", base, "--servers", "5", "--tick", "0.05", "--port", str(gen_port)]
        generator = start([*args, "--api-key-env", KEY_ENV, "--log-level", "warning"], tmp_path / "stream.log")
        try:
            with connect(f"ws://127.0.0.1:{port}/ws/predictions?summary=true", open_timeout=30) as ws:
                doc = until(lambda: tft_forecast(base, 5), 60, "TFT forecasts of the streamed fleet")
                pushed = json.loads(ws.recv(timeout=30))
                assert set(pushed) == {"metadata", "environment", "alerts"} and pushed["metadata"]["version"] >= 1
            assert len(next(iter(doc["predictions"].values()))["cpu_pct"]["p90"]) == 96
            keyed = {"X-API-Key": "s3cret"}
            assert httpx.post(gen + "/scenario/set", json={"scenario": "degrading"}).status_code == 401
            answer = httpx.post(gen + "/scenario/set", json={"scenario": "degrading"}, headers=keyed).json()
            assert answer["new_scenario"] == "degrading"
            status = httpx.get(gen + "/scenario/status").json()
            assert status["scenario"] == "degrading" and status["steps_sent"] >= 12
            assert httpx.post(base + "/feed/data", json={"records": []}).status_code == 401
            families = {f.name for f in text_string_to_metric_families(httpx.get(base + "/metrics").text)}
            assert {"workbench_forecast_cpu_ratio", "workbench_alert", "workbench_incident_probability"} <= families
            daemon_status = httpx.get(base + "/status").json()
            assert daemon_status["warmup"]["is_warmed_up"] and daemon_status["fleet"]["total_servers"] == 5
        finally:
            assert stop(generator, signal.SIGINT) in GRACEFUL
    finally:
        assert stop(daemon) in GRACEFUL
    meta = json.loads((tmp_path / "state" / "snapshot.json").read_text())  # written by the shutdown alone
    assert meta["tick_count"] >= 12 and len(meta["servers"]) == 5


def test_kill_9_while_feeding_loses_no_acknowledged_record(tmp_path, tiny_bundle_dir):
    servers, state = 4, tmp_path / "state"
    stream = FleetStream(servers, seed=9)
    bodies = [encode_step(next(stream)) for _ in range(400)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = serve(tiny_bundle_dir, state, port, tmp_path / "serve.log", "--snapshot-every", "0.5")
    acked: list[int] = []
    stop_feeding = threading.Event()

    def feeder() -> None:
        with httpx.Client(timeout=5) as client:
            for k, body in enumerate(bodies):
                if stop_feeding.is_set():
                    return
                try:
                    response = client.post(base + "/feed/data", content=body)
                except httpx.TransportError:
                    return  # the daemon is gone: this step was never acknowledged
                if response.status_code == 200:
                    acked.append(k)
                time.sleep(0.005)

    thread = threading.Thread(target=feeder)
    try:
        until(lambda: httpx.get(base + "/health").json()["running"], 90, "the inference daemon")
        thread.start()
        until(lambda: len(acked) >= 30 and (state / "snapshot.json").is_file(), 60, "feeding and a snapshot")
        worker = until(lambda: httpx.get(base + "/status").json()["forecast_worker"]["pid"], 60, "the forecast worker")
        os.kill(daemon.pid, signal.SIGKILL)  # mid-feeding
        daemon.wait(10)
        until(lambda: exited(worker), 30, "the orphaned forecast worker to exit")
    finally:
        stop_feeding.set()
        thread.join(30)
        stop(daemon)
    assert acked == list(range(len(acked))) and len(acked) < len(bodies)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    restarted = serve(tiny_bundle_dir, state, port, tmp_path / "restart.log")
    try:
        status = until(lambda: httpx.get(base + "/status").json(), 90, "the restarted daemon")
        assert status["tick_count"] >= len(acked)
        assert status["ingest"]["records_total"] >= len(acked) * servers
        assert status["warmup"]["is_warmed_up"]  # no new warm-up
        assert status["window_size"] >= servers * min(48, len(acked))
        last = 5 * acked[-1]
        expected = f"2025-01-06T{last // 60:02d}:{last % 60:02d}:00+00:00"
        doc = until(lambda: tft_forecast(base, servers), 60, "forecasts without any new data")
        assert doc["metadata"]["data_time"] >= expected  # the last acknowledged step is there
        nxt = httpx.post(base + "/feed/data", content=bodies[len(acked) + 1])
        assert nxt.status_code == 200
    finally:
        assert stop(restarted) in GRACEFUL
