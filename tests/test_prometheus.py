"""``GET /metrics`` in Prometheus' conventions (checked by promtool) and the examples in examples/prometheus/."""

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from debian_tools import AMTOOL, PROMTOOL, run_tool
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import workbench
from workbench import contract as c
from workbench.adapters.units import MIB
from workbench.alerts import Alert
from workbench.forecast import Forecast
from workbench.model import load_bundle
from workbench.risk import risk
from workbench.service.generator_app import encode_step
from workbench.service.inference_app import create_app
from workbench.service.prom import render_forecast
from workbench.service.settings import InferenceSettings
from workbench.simulator import FleetStream
from workbench.thresholds import Thresholds

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
EXAMPLES = ROOT / "examples" / "prometheus"
SERVERS = 4


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def promtool_metrics(text: str) -> None:
    checked = run_tool(PROMTOOL, "check", "metrics", stdin=text.encode())
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def constructed() -> tuple[Forecast, list[Alert]]:
    """Two servers (one name to escape): cpu p50 97.5 % at 30 min, latency 250 ms at 1 h, disk I/O 2 MB/s at 4 h."""
    j = {m: k for k, m in enumerate(c.METRIC_NAMES)}
    quantiles = np.ones((2, len(c.METRIC_NAMES), 96, 3))
    quantiles[0, j["cpu_pct"], 5] = [90.0, 97.5, 99.0]
    quantiles[0, j["latency_ms"], 11, 1] = 250.0
    quantiles[0, j["disk_io_mb_s"], 47, 1] = 2.0
    current = np.full((2, len(c.METRIC_NAMES)), 0.5)
    current[0, j["mem_pct"]] = 42.0
    servers = ["ppdb001", 'odd"name\\x']
    forecast = Forecast(servers, ["database", "generic"], c.METRIC_NAMES, np.array([100, 100]), quantiles, current)
    alerts = [
        Alert("ppdb001", "cpu_pct", "critical", 97.5, 95.0, 30, 0.83, "database", 100, rule="calibrated"),
        Alert("ppdb001", "latency_ms", "warning", 250.0, 50.0, 60, None, "database", 100, rule="predict_linear"),
    ]
    return forecast, alerts


def test_each_contract_metric_names_its_base_unit():
    names = [m.prometheus_name for m in c.METRICS]
    assert len(set(names)) == len(names)
    factors = {"%": 0.01, "MB/s": MIB, "ms": 0.001, "fraction": 1.0}
    suffixes = {"%": "_ratio", "MB/s": "_bytes_per_second", "ms": "_seconds", "fraction": "_ratio"}
    for m in c.METRICS:
        assert m.to_base == factors[m.unit] and m.prometheus_name.endswith(suffixes[m.unit]), m
    assert "prometheus_name" not in c.contract_json()["metrics"][0]  # bundles and state folders are unaffected


def test_forecast_families_are_in_base_units_with_band_and_instance():
    forecast, alerts = constructed()
    got = families(render_forecast(forecast, alerts, None).decode())
    cpu = {
        (s.labels["instance"], s.labels["band"], s.labels["horizon"]): s.value
        for s in got["workbench_forecast_cpu_ratio"].samples
    }
    assert cpu[("ppdb001", "p50", "30m")] == 0.975 and cpu[("ppdb001", "p90", "30m")] == 0.99
    assert len(cpu) == 2 * 3 * 4 and {k[0] for k in cpu} == {"ppdb001", 'odd"name\\x'}
    latency = got["workbench_forecast_latency_seconds"].samples
    assert {(s.labels["band"], s.labels["horizon"]): s.value for s in latency if s.labels["instance"] == "ppdb001"}[
        ("p50", "1h")
    ] == 0.25
    disk_io = got["workbench_forecast_disk_io_bytes_per_second"].samples
    assert [s.value for s in disk_io if s.labels == {"instance": "ppdb001", "band": "p50", "horizon": "4h"}] == [
        2097152
    ]
    memory = got["workbench_observed_memory_ratio"].samples
    assert [(s.labels, s.value) for s in memory][0] == ({"instance": "ppdb001"}, 0.42)
    expected = {f"workbench_{kind}_{m.prometheus_name}" for m in c.METRICS for kind in ("forecast", "observed")}
    assert expected <= set(got) and not any("quantile" in s.labels for f in got.values() for s in f.samples)


def test_alert_and_risk_families():
    forecast, alerts = constructed()
    report = risk(forecast, Thresholds())
    got = families(render_forecast(forecast, alerts, report).decode())
    labels = {"instance": "ppdb001", "metric": "cpu_pct", "severity": "critical", "rule": "calibrated"}
    assert [(s.labels, s.value) for s in got["workbench_alert"].samples][0] == (labels, 1.0)
    assert {s.labels["metric"]: s.value for s in got["workbench_alert_lead_seconds"].samples} == {
        "cpu_pct": 1800.0,
        "latency_ms": 3600.0,
    }
    assert [(s.labels, s.value) for s in got["workbench_alert_probability"].samples] == [
        (labels, 0.83)
    ]  # one rule gives one
    scores = {s.labels["instance"]: s.value for s in got["workbench_risk"].samples}
    assert scores == pytest.approx(dict(zip(report.servers, report.risk_score / 100, strict=True)))
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_rendered_families_pass_promtool_with_and_without_a_forecast():
    forecast, alerts = constructed()
    promtool_metrics(render_forecast(forecast, alerts, risk(forecast, Thresholds())).decode())
    promtool_metrics(render_forecast(None, [], None).decode())


@pytest.fixture(scope="module")
def demo_bundle():
    return load_bundle(DEMO, device="cpu")


def wait_for(predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def after_a_failed_post(client: TestClient) -> str | None:
    """The ``/metrics`` text once the daemon has failed to reach its Alertmanager."""
    text = client.get("/metrics").text
    posts = families(text).get("workbench_alertmanager_posts")
    failed = posts is not None and any(s.labels["outcome"] == "failure" and s.value >= 1 for s in posts.samples)
    return text if failed else None


def test_metrics_of_a_running_daemon_pass_promtool(tmp_path, demo_bundle):
    levels = tmp_path / "levels.yaml"
    levels.write_text("levels:\n  mem_pct: {warning: 1, critical: 2}\n")  # every server alerts
    settings = InferenceSettings(
        bundle=DEMO, state_dir=tmp_path / "state", device="cpu", poll_seconds=0.02, forecast_worker="thread",
        thresholds=levels, alert_rule="band_edge", alertmanager=(f"http://127.0.0.1:{closed_port()}",),
    )  # fmt: skip
    app = create_app(settings, bundle=demo_bundle)
    stream = FleetStream(SERVERS, seed=4)
    with TestClient(app) as client:
        for _ in range(demo_bundle.spec.min_encoder_length):
            assert client.post("/feed/data", content=encode_step(next(stream))).status_code == 200
        wait_for(lambda: client.get("/predictions/current").json()["metadata"]["servers_forecast"] == SERVERS)
        text = wait_for(lambda: after_a_failed_post(client))
    promtool_metrics(text)
    got = families(text)
    assert len(got["workbench_forecast_memory_ratio"].samples) == SERVERS * 3 * 4
    assert len({s.labels["instance"] for s in got["workbench_observed_cpu_ratio"].samples}) == SERVERS
    alerts = [s.labels for s in got["workbench_alert"].samples]
    assert sum((a["metric"], a["severity"]) == ("mem_pct", "critical") for a in alerts) == SERVERS
    assert all(0 <= s.value <= 1 for s in got["workbench_risk"].samples + got["workbench_alert_probability"].samples)
    build = got["workbench_build_info"].samples[0]
    assert build.name == "workbench_build_info" and build.value == 1
    assert build.labels == {
        "version": workbench.__version__, "contract_version": c.CONTRACT_VERSION, "bundle": "demo",
        "model_type": "TFT", "alert_rule": "band_edge",
    }  # fmt: skip
    assert {s.labels["window"] for s in got["workbench_incident_probability"].samples} == {"30m", "8h"}
    healthy = app.state.daemon.predictor.latest.summary["environment"]["healthy_probability_8h"]
    assert ("workbench_incident_probability_healthy" in got) == (healthy is not None)
    counters = [f for f in got.values() if f.type == "counter"]
    assert counters and all(s.name.endswith("_total") for f in counters for s in f.samples)


def test_example_prometheus_config_and_rules_pass_promtool():
    for args in (
        ("check", "config", "examples/prometheus/prometheus.yml"),
        ("check", "rules", "examples/prometheus/workbench.rules.yml"),
        ("test", "rules", "examples/prometheus/workbench.rules.test.yml"),
    ):
        checked = run_tool(PROMTOOL, *args)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout


def test_example_alertmanager_config_passes_amtool():
    checked = run_tool(AMTOOL, "check-config", "examples/prometheus/alertmanager.yml")
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
