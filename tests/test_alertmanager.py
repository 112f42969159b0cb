"""Pushing predictive alerts to Alertmanager: the API v2 payload, resolves, failures, and a real Alertmanager."""

import json
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from debian_tools import ALERTMANAGER, tool
from fastapi.testclient import TestClient

from workbench.alerts import Alert
from workbench.cli import main
from workbench.errors import ConfigError
from workbench.model import load_bundle
from workbench.service.alertmanager import ALERTNAME, AlertmanagerPusher
from workbench.service.generator_app import encode_step
from workbench.service.inference_app import create_app
from workbench.service.settings import InferenceSettings
from workbench.simulator import FleetStream

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
URL = "http://am.example:9093"
LINK = "http://127.0.0.1:8000/alerts/active"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def alert(
    metric: str = "cpu_pct", severity: str = "critical", probability: float | None = 0.83, server: str = "ppdb001"
) -> Alert:
    return Alert(server, metric, severity, 97.5, 95.0, 30, probability, "database", 100, rule="calibrated")


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Recorder:
    """An httpx transport that records each POSTed list of alerts and answers with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: list[list[dict]] = []
        self.error: Exception | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.error is not None:
            raise self.error
        assert request.method == "POST" and str(request.url) == URL + "/api/v2/alerts"
        self.posts.append(json.loads(request.content))
        return httpx.Response(self.status)

    def pusher(self, **options) -> AlertmanagerPusher:
        client = httpx.Client(transport=httpx.MockTransport(self))
        return AlertmanagerPusher([URL + "/"], period_seconds=300, generator_url=LINK, client=client, **options)


def test_a_firing_alert_is_posted_with_labels_annotations_and_an_end_a_few_periods_ahead():
    recorder = Recorder()
    pusher = recorder.pusher()
    pusher.push([alert()], now=T0)
    pusher.flush()
    assert recorder.posts == [
        [
            {
                "labels": {
                    "alertname": ALERTNAME,
                    "instance": "ppdb001",
                    "profile": "database",
                    "metric": "cpu_pct",
                    "severity": "critical",
                    "rule": "calibrated",
                },
                "annotations": {"summary": alert().summary(), "lead_seconds": "1800", "probability": "0.83"},
                "startsAt": stamp(T0),
                "endsAt": stamp(T0 + timedelta(seconds=4 * 300)),
                "generatorURL": LINK,
            }
        ]
    ]
    assert pusher.posts == {"success": 1, "failure": 0}
    pusher.flush()
    assert len(recorder.posts) == 1  # nothing new: nothing sent


def test_a_rule_without_probability_has_no_probability_annotation():
    sent = Recorder().pusher().payloads([alert(probability=None).to_dict()], now=T0)  # the REST object works too
    assert set(sent[0]["annotations"]) == {"summary", "lead_seconds"}


def test_each_forecast_resends_firing_alerts_then_resolves_a_cleared_one_once():
    recorder = Recorder()
    pusher = recorder.pusher()
    t1, t2, t3 = (T0 + timedelta(minutes=5 * k) for k in (1, 2, 3))
    for now, active in ((T0, [alert()]), (t1, [alert()]), (t2, []), (t3, [])):
        pusher.push(active, now=now)
        pusher.flush()
    assert len(recorder.posts) == 3  # the fourth forecast has nothing to say
    resent, resolved = recorder.posts[1][0], recorder.posts[2][0]
    assert resent["startsAt"] == stamp(T0) and resent["endsAt"] == stamp(t1 + timedelta(minutes=20))
    assert resolved["labels"] == resent["labels"] and resolved["annotations"] == resent["annotations"]
    assert resolved["startsAt"] == stamp(T0) and resolved["endsAt"] == stamp(t2)


def test_an_escalation_resolves_the_warning_and_explicitly_cleared_alerts_are_resolved():
    pusher = Recorder().pusher()
    pusher.payloads([alert(severity="warning")], now=T0)
    sent = pusher.payloads([alert(severity="critical")], [alert("mem_pct")], now=T0 + timedelta(minutes=5))
    states = {(a["labels"]["metric"], a["labels"]["severity"]): a["endsAt"] for a in sent}
    later = stamp(T0 + timedelta(minutes=25))
    now = stamp(T0 + timedelta(minutes=5))
    assert states == {("cpu_pct", "critical"): later, ("cpu_pct", "warning"): now, ("mem_pct", "critical"): now}


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_failing_alertmanager_never_raises_and_is_retried_after_a_back_off(status, monkeypatch):
    recorder = Recorder(status)
    pusher = recorder.pusher()
    pusher.push([alert()], now=T0)
    pusher.flush()
    pusher.flush()  # within the back-off: not tried
    assert len(recorder.posts) == 1 and pusher.posts == {"success": 0, "failure": 1}
    recorder.status = 200
    clock = time.monotonic() + 1.5
    monkeypatch.setattr("workbench.service.alertmanager.time.monotonic", lambda: clock)
    pusher.flush()
    assert len(recorder.posts) == 2 and recorder.posts[1] == recorder.posts[0]
    assert pusher.posts == {"success": 1, "failure": 1}


def test_an_unreachable_alertmanager_never_raises_and_refused_alerts_are_dropped():
    recorder = Recorder()
    recorder.error = httpx.ConnectError("connection refused")
    pusher = recorder.pusher(max_backoff=0.0)
    pusher.push([alert()], now=T0)
    pusher.flush()
    assert pusher.posts == {"success": 0, "failure": 1}
    recorder.error, recorder.status = None, 400  # Alertmanager refuses the alerts themselves
    pusher.flush()
    pusher.flush()
    assert len(recorder.posts) == 1 and pusher.posts == {"success": 0, "failure": 2}


def test_submit_returns_at_once_and_a_background_thread_sends():
    release = threading.Event()
    received: list[list[dict]] = []

    def slow(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content))
        release.wait(5)
        return httpx.Response(200)

    client = httpx.Client(transport=httpx.MockTransport(slow))
    pusher = AlertmanagerPusher([URL], period_seconds=300, generator_url=LINK, client=client)
    pusher.start()
    try:
        started = time.monotonic()
        pusher.submit([alert()])
        pusher.submit([alert(), alert("mem_pct")])  # before or while the first is sent
        assert time.monotonic() - started < 0.5
        release.set()
        both = {"cpu_pct", "mem_pct"}
        until(lambda: any({a["labels"]["metric"] for a in body} == both for body in received), 10, "the second POST")
    finally:
        pusher.close()
    assert pusher.posts["failure"] == 0


def test_serve_takes_alertmanager_urls_from_options_or_the_environment(tmp_path, monkeypatch):
    seen: list[InferenceSettings] = []
    monkeypatch.setattr("workbench.service.inference_app.create_app", lambda settings: seen.append(settings))
    monkeypatch.setattr("workbench.service.runner.run_app", lambda *args, **kwargs: None)
    base = ["serve", "--bundle", str(tmp_path), "--no-state"]
    args = [*base, "--alertmanager", "http://a:9093", "--alertmanager", "http://b:9093"]
    assert CliRunner().invoke(main, args).exit_code == 0
    env = {"WORKBENCH_ALERTMANAGER": "http://c:9093 http://d:9093"}
    assert CliRunner().invoke(main, base, env=env).exit_code == 0
    assert [s.alertmanager for s in seen] == [("http://a:9093", "http://b:9093"), ("http://c:9093", "http://d:9093")]
    with pytest.raises(ConfigError, match="alertmanager='am:9093' must be an http"):
        InferenceSettings(bundle=tmp_path, alertmanager=("am:9093",))


# --------------------------------------------------------------------------- a real Alertmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webhook(BaseHTTPRequestHandler):
    """Alertmanager's notifications, as its webhook receiver sends them."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


CONFIG = """
route:
  receiver: hook
  group_by: [alertname, instance]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{port}/
        send_resolved: true
"""


def start_alertmanager(tmp_path, hook_port: int) -> tuple[subprocess.Popen, str]:
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG.format(port=hook_port))
    for _ in range(3):  # another process may take the free port before Alertmanager binds it
        port = free_port()
        process = subprocess.Popen(
            [
                tool(ALERTMANAGER), f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "alertmanager.log", "ab"),
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(base + "/-/ready", timeout=1).status_code == 200:
                    return process, base
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        stop(process)
    raise AssertionError("Alertmanager did not start: " + (tmp_path / "alertmanager.log").read_text())


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    Webhook.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    process, base = start_alertmanager(tmp_path_factory.mktemp("alertmanager"), hook.server_address[1])
    try:
        yield base
    finally:
        stop(process)
        hook.shutdown()
        hook.server_close()


def until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met in {timeout} s")


def listed(base: str, instance: str) -> list[dict]:
    alerts = httpx.get(base + "/api/v2/alerts", params={"filter": f'instance="{instance}"'}).json()
    return [a for a in alerts if a["labels"]["alertname"] == ALERTNAME]


def notified(status: str, instance: str) -> dict | None:
    for message in Webhook.received:
        for a in message["alerts"]:
            if a["status"] == status and a["labels"]["instance"] == instance:
                return a
    return None


@pytest.mark.slow
def test_a_real_alertmanager_lists_the_pushed_alert_then_resolves_it(alertmanager):
    pusher = AlertmanagerPusher([alertmanager], period_seconds=300, generator_url=LINK)
    firing = alert(server="pptest001")
    try:
        pusher.push([firing])
        pusher.flush()
        assert pusher.posts == {"success": 1, "failure": 0}
        [shown] = listed(alertmanager, "pptest001")
        assert shown["status"]["state"] == "active" and shown["labels"]["severity"] == "critical"
        assert shown["annotations"]["summary"] == firing.summary() and shown["generatorURL"] == LINK
        assert datetime.fromisoformat(shown["endsAt"]) > datetime.now(UTC) + timedelta(minutes=15)
        until(lambda: notified("firing", "pptest001"), what="the firing notification")
        pusher.push([])
        pusher.flush()
        assert pusher.posts == {"success": 2, "failure": 0}
        assert listed(alertmanager, "pptest001") == []  # Alertmanager lists the alerts that have not ended
        resolved = until(lambda: notified("resolved", "pptest001"), what="the resolved notification")
        assert datetime.fromisoformat(resolved["endsAt"]) <= datetime.now(UTC)
    finally:
        pusher.close()


@pytest.mark.slow
def test_the_daemon_pushes_each_forecast_alerts_to_a_real_alertmanager(alertmanager, tmp_path):
    levels = tmp_path / "levels.yaml"
    levels.write_text("levels:\n  mem_pct: {warning: 1, critical: 2}\n")  # every server alerts
    settings = InferenceSettings(
        bundle=DEMO, state_dir=tmp_path / "state", device="cpu", poll_seconds=0.02, forecast_worker="thread",
        thresholds=levels, alert_rule="band_edge", alertmanager=(alertmanager,), port=8123,
    )  # fmt: skip
    bundle = load_bundle(DEMO, device="cpu")
    stream = FleetStream(3, seed=4)
    with TestClient(create_app(settings, bundle=bundle)) as client:
        for _ in range(bundle.spec.min_encoder_length):
            assert client.post("/feed/data", content=encode_step(next(stream))).status_code == 200
        servers = until(lambda: client.get("/predictions/current").json()["predictions"], what="a forecast")

        def pushed() -> list[dict]:
            shown = [
                a for server in servers for a in listed(alertmanager, server) if a["labels"]["metric"] == "mem_pct"
            ]
            return shown if len(shown) == len(servers) else []

        shown = until(pushed, what="the daemon's alerts in Alertmanager")
    assert {a["labels"]["severity"] for a in shown} == {"critical"}
    assert {a["labels"]["rule"] for a in shown} == {"band_edge"}
    assert all(a["generatorURL"] == "http://127.0.0.1:8123/alerts/active" for a in shown)
