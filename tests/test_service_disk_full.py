"""A real daemon whose state folder fills up: clear 503s, honest health, nothing acknowledged lost.

The folder is a small tmpfs (mounting needs root; the test is skipped without it).
"""

import os
import signal
import subprocess

import httpx
import pytest
from test_service_e2e import free_port, serve, stop, until

from workbench.service.generator_app import encode_step
from workbench.simulator import FleetStream

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder) -> None:
    """Write until the disk is full, unbuffered, so no failed tail is flushed again on close."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                continue
    finally:
        os.close(fd)


def test_a_full_disk_answers_503_turns_health_red_and_recovers_without_loss(tmp_path, small_disk, tiny_bundle_dir):
    stream = FleetStream(4, seed=5)
    bodies = [encode_step(next(stream)) for _ in range(60)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = serve(tiny_bundle_dir, small_disk, port, tmp_path / "serve.log", "--snapshot-every", "0.5")
    acked = 0
    try:
        until(lambda: httpx.get(base + "/health").status_code == 200, 90, "the inference daemon")
        for body in bodies[:20]:
            assert httpx.post(base + "/feed/data", content=body).status_code == 200
            acked += 1
        fill(small_disk)
        refused = [httpx.post(base + "/feed/data", content=body) for body in bodies[20:30]]
        assert {r.status_code for r in refused} <= {200, 503} and refused[-1].status_code == 503
        acked += sum(r.status_code == 200 for r in refused)
        assert "nothing stored" in refused[-1].json()["detail"]
        health = until(lambda: httpx.get(base + "/health"), 10, "health")
        assert health.status_code == 503 and health.json()["problems"]
        (small_disk / "filler").unlink()
        for body in bodies[30:40]:
            assert httpx.post(base + "/feed/data", content=body).status_code == 200
            acked += 1
        until(lambda: httpx.get(base + "/health").status_code == 200, 30, "health after space returns")
    finally:
        assert stop(daemon, signal.SIGTERM) == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    again = serve(tiny_bundle_dir, small_disk, port, tmp_path / "restart.log")
    try:
        status = until(lambda: httpx.get(base + "/status").json(), 90, "the restarted daemon")
        assert status["tick_count"] == acked  # every acknowledged batch, and only those
        assert status["state"]["recovery"]["lost_batches"] == 0
    finally:
        stop(again)
