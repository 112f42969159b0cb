"""``workbench forward --prometheus``: query_range parsing, records on the grid, back-off, refusals, end to end."""

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest
from click.testing import CliRunner
from debian_tools import NODE_EXPORTER, PROMETHEUS, tool
from fastapi.testclient import TestClient

from workbench.cli import main
from workbench.errors import ConfigError
from workbench.model import load_bundle
from workbench.service import prometheus_source as ps
from workbench.service.inference_app import create_app
from workbench.service.settings import InferenceSettings

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
PROM = "http://prom.example:9090"
T0 = int(datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp())  # on the 5-minute grid
LOGGER = "workbench.service.prometheus_source"


def matrix(*series) -> dict:
    return {"status": "success", "data": {"resultType": "matrix", "result": list(series)}}


def series(labels: dict, points: list[tuple[float, str]]) -> dict:
    return {"metric": labels, "values": [[t, v] for t, v in points]}


class FakePrometheus:
    """A query_range endpoint: each query name maps to ``{instance: value(t)}``, or to an HTTP error."""

    def __init__(self, data: dict, failing: dict | None = None) -> None:
        self.data = data
        self.failing = failing or {}
        self.asked: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.asked.append(params)
        assert request.url.path == ps.QUERY_RANGE_PATH and params["step"] == "300s"
        query = params["query"]
        if query in self.failing:
            return httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": self.failing[query]})
        start, end = float(params["start"]), float(params["end"])
        times = [start + k * 300 for k in range(int((end - start) // 300) + 1)]
        result = [
            series({"instance": inst, "job": "node"}, [(t, f(t)) for t in times])
            for inst, f in self.data[query].items()
        ]
        return httpx.Response(200, json=matrix(*result))


class FakeDaemon:
    """POST /feed/data that accepts everything, after answering ``statuses`` first."""

    def __init__(self, statuses=()) -> None:
        self.statuses = list(statuses)
        self.bodies: list[list[dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.statuses:
            action = self.statuses.pop(0)
            if isinstance(action, Exception):
                raise action
            return httpx.Response(action, json={"detail": "busy"})
        records = json.loads(request.content)["records"]
        self.bodies.append(records)
        return httpx.Response(200, json={"records_added": len(records), "rejected": [], "too_old": 0})

    @property
    def records(self) -> list[dict]:
        return [r for body in self.bodies for r in body]


def forwarder(prom, feed_client, now: float, **kwargs) -> ps.PrometheusForwarder:
    clock = kwargs.pop("clock", lambda: now)
    queries = kwargs.pop("queries", {"cpu_pct": "cpu", "mem_pct": "mem"})
    return ps.PrometheusForwarder(
        httpx.Client(transport=httpx.MockTransport(prom)),
        ps.FeedClient(feed_client, sleep=kwargs.pop("sleep", lambda s: None)),
        base_url=PROM,
        queries=queries,
        clock=clock,
        **kwargs,
    )


def daemon_client(handler) -> httpx.Client:
    return httpx.Client(base_url="http://daemon", transport=httpx.MockTransport(handler))


def stamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- queries and parsing


def test_query_range_url_keeps_a_path_prefix_and_asks_for_5_minute_steps():
    url = ps.query_range_url("http://host:9090/prom/", 'up{job="node"}', T0, T0 + 600)
    assert url.path == "/prom/api/v1/query_range"
    assert dict(url.params) == {
        "query": 'up{job="node"}',
        "start": f"{T0}.000",
        "end": f"{T0 + 600}.000",
        "step": "300s",
    }


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("ppdb001:9100", "ppdb001"),
        ("web-7.example.com:9100", "web-7.example.com"),
        ("[::1]:9100", "::1"),
        ("10.0.0.5", "10.0.0.5"),
        ("db 3/üst:9100", "db_3__st"),
        ("x" * 200 + ":1", "x" * 128),
        ("", None),
        (None, None),
    ],
)
def test_instance_labels_become_contract_server_names(raw, name):
    assert ps.server_name(raw) == name


def test_parse_matrix_several_instances_nan_odd_names_and_missing_labels(caplog):
    doc = matrix(
        series({"instance": "ppdb001:9100"}, [(T0 + 300, "12.5"), (T0 + 600, "NaN"), (T0 + 900, "+Inf")]),
        series({"instance": "web 7/ü:9100"}, [(T0 + 300, "40"), (T0 + 600, "41")]),
        series({"instance": "web 7/ü:9182"}, [(T0 + 300, "60")]),  # another port, the same server: mean
        series({"job": "node"}, [(T0 + 300, "5")]),
    )
    with caplog.at_level(logging.WARNING, LOGGER):
        frame = ps.parse_matrix(doc, "cpu_pct").sort("server_name", "timestamp")
    assert frame.schema == pl.Schema(ps.SAMPLE_SCHEMA)
    assert frame.rows() == [
        ("ppdb001", datetime.fromtimestamp(T0, UTC), "cpu_pct", 12.5),  # evaluated at the step's end
        ("web_7__", datetime.fromtimestamp(T0, UTC), "cpu_pct", 50.0),
        ("web_7__", datetime.fromtimestamp(T0 + 300, UTC), "cpu_pct", 41.0),
    ]
    assert "1 series without the label 'instance' skipped" in caplog.text


def test_parse_matrix_combines_a_max_metric_with_max_and_refuses_errors():
    doc = matrix(series({"instance": "a:1"}, [(T0, "0.2")]), series({"instance": "a:2"}, [(T0, "0.5")]))
    assert ps.parse_matrix(doc, "error_rate")["value"].to_list() == [0.5]
    assert ps.parse_matrix(matrix(), "cpu_pct").height == 0
    with pytest.raises(ps.PrometheusError, match="bad_data: parse error"):
        ps.parse_matrix({"status": "error", "errorType": "bad_data", "error": "parse error"}, "cpu_pct")
    with pytest.raises(ps.PrometheusError, match="expected a matrix"):
        ps.parse_matrix({"status": "success", "data": {"resultType": "vector", "result": []}}, "cpu_pct")


def test_query_options_replace_drop_and_follow_the_instance_label():
    queries = ps.parse_query_options(["latency_ms=histogram_quantile(0.99, x) * 1000", "disk_pct="], "host")
    assert queries["latency_ms"] == "histogram_quantile(0.99, x) * 1000" and "disk_pct" not in queries
    assert "by (host)" in queries["cpu_pct"] and "by (instance)" not in queries["net_in_mb_s"]
    assert set(ps.DEFAULT_QUERIES) == {"cpu_pct", "mem_pct", "disk_pct", "disk_io_mb_s", "net_in_mb_s", "net_out_mb_s"}
    with pytest.raises(ConfigError, match="METRIC one of cpu_pct"):
        ps.parse_query_options(["load=node_load1"])
    with pytest.raises(ConfigError, match="nothing to forward"):
        ps.parse_query_options([f"{m}=" for m in ps.DEFAULT_QUERIES])


# --------------------------------------------------------------------------- records


def test_records_on_the_grid_with_the_metrics_each_step_has():
    samples = pl.DataFrame(
        {
            "server_name": ["ppdb001", "ppdb001", "ppdb001", "web-7"],
            "timestamp": [datetime.fromtimestamp(t, UTC) for t in (T0, T0, T0 + 300, T0)],
            "metric": ["cpu_pct", "mem_pct", "cpu_pct", "mem_pct"],
            "value": [10.0, 50.0, 11.0, 70.0],
        },
        schema=ps.SAMPLE_SCHEMA,
    )
    records = ps.assemble_records(samples, {"ppdb001": "database", "web-7": "generic"})
    assert records == [
        {"timestamp": stamp(T0), "server_name": "ppdb001", "profile": "database", "cpu_pct": 10.0, "mem_pct": 50.0},
        {"timestamp": stamp(T0 + 300), "server_name": "ppdb001", "profile": "database", "cpu_pct": 11.0},
        {"timestamp": stamp(T0), "server_name": "web-7", "profile": "generic", "mem_pct": 70.0},
    ]
    assert ps.assemble_records(ps.empty_samples(), {}) == []


def test_values_outside_the_contract_are_clipped_or_left_for_the_daemon():
    samples = pl.DataFrame(
        {"server_name": ["a"] * 3, "timestamp": [datetime.fromtimestamp(T0, UTC)] * 3},
        schema={"server_name": pl.String, "timestamp": pl.Datetime("us", "UTC")},
    ).with_columns(metric=pl.Series(["cpu_pct", "mem_pct", "net_in_mb_s"]), value=pl.Series([-0.2, 100.4, 5e3]))
    clipped, outside = ps.fit_ranges(samples, clip=True)
    assert outside == 2 and clipped["value"].to_list() == [0.0, 100.0, 5e3]
    kept, outside = ps.fit_ranges(samples, clip=False)
    assert outside == 2 and kept["value"].to_list() == [-0.2, 100.4, 5e3]


# --------------------------------------------------------------------------- the loop


def constant(value: float):
    return lambda t: str(value)


def test_cycles_send_each_step_once_and_a_restart_sends_the_backfill_again():
    prom = FakePrometheus({"cpu": {"ppdb001:9100": lambda t: str(t % 7)}, "mem": {"ppdb001:9100": constant(50)}})
    daemon = FakeDaemon()
    now = [T0 + 75.0]  # 12:01:15: the newest complete step is 11:55, read 60 s after it ended
    fwd = forwarder(prom, daemon_client(daemon), 0, clock=lambda: now[0], backfill_steps=3)
    first = fwd.cycle()
    assert [r["timestamp"] for r in daemon.records] == [stamp(T0 - 900), stamp(T0 - 600), stamp(T0 - 300)]
    assert first.records == 3 and first.values == 6 and first.accepted == 3 and not first.refused
    assert float(prom.asked[0]["start"]) == T0 - 600 and float(prom.asked[0]["end"]) == T0  # steps' ends
    assert daemon.records[0]["cpu_pct"] == (T0 - 600) % 7  # the value evaluated at the step's end
    assert fwd.cycle().last is None and len(prom.asked) == 2  # the same step: nothing asked, nothing sent
    now[0] += 300
    fwd.cycle()
    assert [r["timestamp"] for r in daemon.bodies[-1]] == [stamp(T0)]  # only the new step
    assert float(prom.asked[-1]["start"]) == T0 - 300  # the backfill window is read again
    restarted = forwarder(prom, daemon_client(daemon), 0, clock=lambda: now[0], backfill_steps=3)
    restarted.cycle()
    assert [r["timestamp"] for r in daemon.bodies[-1]] == [stamp(T0 - 600), stamp(T0 - 300), stamp(T0)]


def test_a_failing_query_does_not_block_the_others_and_is_caught_up(caplog):
    prom = FakePrometheus(
        {"cpu": {"ppweb001:9100": constant(30)}, "mem": {"ppweb001:9100": constant(60)}},
        failing={"cpu": "1:5: parse error: unexpected identifier"},
    )
    daemon = FakeDaemon()
    fwd = forwarder(prom, daemon_client(daemon), T0 + 75, backfill_steps=2)
    with caplog.at_level(logging.INFO, LOGGER):
        report = fwd.cycle()
    assert set(report.failed) == {"cpu_pct"} and "bad_data: 1:5: parse error" in report.failed["cpu_pct"]
    assert [set(r) - {"timestamp", "server_name", "profile"} for r in daemon.records] == [{"mem_pct"}] * 2
    assert "query for cpu_pct failed: HTTP 400: bad_data" in caplog.text
    assert "sent 2 records (2 values) of 1 server, 2 accepted, 0 refused; queries failed: cpu_pct" in caplog.text
    prom.failing.clear()
    fwd.cycle()  # the same step: only the failed query is asked again, and only its values are sent
    assert [p["query"] for p in prom.asked] == ["cpu", "mem", "cpu"]
    assert [(r["timestamp"], r["cpu_pct"]) for r in daemon.bodies[-1]] == [
        (stamp(T0 - 600), 30.0),
        (stamp(T0 - 300), 30.0),
    ]
    assert all("mem_pct" not in r for r in daemon.bodies[-1])


def test_unreachable_prometheus_is_reported_per_metric():
    def down(request):
        raise httpx.ConnectError("connection refused")

    fwd = forwarder(down, daemon_client(FakeDaemon()), T0 + 75)
    report = fwd.cycle()
    assert set(report.failed) == {"cpu_pct", "mem_pct"} and "ConnectError" in report.failed["mem_pct"]
    assert report.summary() == "queries failed: cpu_pct, mem_pct"


def test_delivery_backs_off_exponentially_until_the_daemon_answers(caplog):
    daemon = FakeDaemon([httpx.ConnectError("down"), 503, 502, 429])
    pauses: list[float] = []
    prom = FakePrometheus({"cpu": {"a:1": constant(1)}, "mem": {"a:1": constant(2)}})
    fwd = forwarder(prom, daemon_client(daemon), T0 + 75, backfill_steps=1, sleep=pauses.append)
    with caplog.at_level(logging.WARNING, LOGGER):
        report = fwd.cycle()
    assert pauses == [0.5, 1.0, 2.0, 4.0] and report.accepted == 1 and len(daemon.bodies) == 1
    assert "daemon not reached (ConnectError: down); retrying in 0.5 s" in caplog.text
    assert "daemon not reached (HTTP 503: busy); retrying in 1.0 s" in caplog.text


def test_backoff_is_capped():
    pauses: list[float] = []
    client = ps.FeedClient(daemon_client(FakeDaemon([503] * 8)), max_backoff=3.0, sleep=pauses.append)
    assert client.send([{"x": 1}]).accepted == 1
    assert pauses == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0]


def test_a_refused_api_key_stops_the_forwarder():
    client = ps.FeedClient(
        daemon_client(lambda r: httpx.Response(401, json={"detail": "missing or invalid X-API-Key"}))
    )
    with pytest.raises(ConfigError, match="refused the X-API-Key"):
        client.send([{"x": 1}])


def test_batches_keep_the_record_indexes_of_refusals():
    def answer(request):
        records = json.loads(request.content)["records"]
        rejected = [{"index": i, "field": "cpu_pct", "error": "bad"} for i, r in enumerate(records) if r["bad"]]
        return httpx.Response(
            422 if rejected else 200, json={"records_added": len(records) - len(rejected), "rejected": rejected}
        )

    client = ps.FeedClient(daemon_client(answer), batch=2)
    result = client.send([{"bad": False}, {"bad": False}, {"bad": True}, {"bad": False}, {"bad": True}])
    assert result.accepted == 3 and sorted(result.refused) == [2, 4]


@pytest.fixture(scope="module")
def daemon_app():
    settings = InferenceSettings(bundle=DEMO, state_dir=None, device="cpu", forecast_worker="thread")
    app = create_app(settings, bundle=load_bundle(DEMO, device="cpu"))
    with TestClient(app, base_url="http://daemon") as client:
        yield client


def test_refused_records_are_logged_with_the_daemons_reasons(daemon_app, caplog):
    prom = FakePrometheus({"cpu": {"web-9:9100": constant(104.0), "ppdb007:9100": constant(20)}, "mem": {}})
    fwd = forwarder(prom, daemon_app, T0 + 75, backfill_steps=1, clip=False)
    with caplog.at_level(logging.INFO, LOGGER):
        report = fwd.cycle()
    assert report.accepted == 1 and report.outside == 1 and not report.clipped
    assert report.refused == [f"web-9 at {stamp(T0 - 300)}: cpu_pct: must be finite and within [0, 100] %"]
    assert "1 accepted, 1 refused, 1 values outside their contract range (sent)" in caplog.text
    assert f"refused: web-9 at {stamp(T0 - 300)}: cpu_pct: must be finite and within [0, 100] %" in caplog.text
    assert daemon_app.get("/history/ppdb007").json()["metrics"]["cpu_pct"] == [20.0]


def test_the_daemon_adds_a_resent_step_to_the_same_step(daemon_app):
    """No de-duplication: a resent identical value leaves the mean as it was, a different one is averaged in."""
    record = {"timestamp": stamp(T0), "server_name": "ppgen-dup", "cpu_pct": 20.0, "latency_ms": 5.0}
    for value in (20.0, 20.0):
        assert daemon_app.post("/feed/data", json={"records": [{**record, "cpu_pct": value}]}).status_code == 200
    doc = daemon_app.get("/history/ppgen-dup").json()
    assert doc["timestamps"] == [datetime.fromtimestamp(T0, UTC).isoformat()] and doc["metrics"]["cpu_pct"] == [20.0]
    daemon_app.post("/feed/data", json={"records": [{**record, "cpu_pct": 50.0, "latency_ms": 9.0}]})
    doc = daemon_app.get("/history/ppgen-dup").json()
    assert doc["metrics"]["cpu_pct"] == [30.0] and doc["metrics"]["latency_ms"] == [9.0]  # mean of 3; max


def test_profiles_are_inferred_with_a_note_once_per_generic_server(caplog):
    prom = FakePrometheus({"cpu": {"ppdb001:9100": constant(1), "10.0.0.5:9100": constant(2)}, "mem": {}})
    daemon = FakeDaemon()
    now = [T0 + 75.0]
    fwd = forwarder(prom, daemon_client(daemon), 0, clock=lambda: now[0], backfill_steps=1)
    with caplog.at_level(logging.INFO, LOGGER):
        fwd.cycle()
        now[0] += 300
        fwd.cycle()
    assert {r["server_name"]: r["profile"] for r in daemon.records} == {"ppdb001": "database", "10.0.0.5": "generic"}
    notes = [r.message for r in caplog.records if r.message.startswith("note:")]
    assert notes == ["note: 10.0.0.5 matches no profile prefix: sent as profile generic (set one with --profile)"]
    fixed = forwarder(prom, daemon_client(daemon), T0 + 75, backfill_steps=1, profile="web_api")
    fixed.cycle()
    assert {r["profile"] for r in daemon.bodies[-1]} == {"web_api"}


# --------------------------------------------------------------------------- the command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_forward_help_shows_the_default_queries():
    result = CliRunner().invoke(main, ["forward", "--help"])
    assert result.exit_code == 0
    for metric, query in ps.DEFAULT_QUERIES.items():
        assert f"{metric:<13} {query}" in result.output
    assert "latency_ms and error_rate have no default" in result.output


def test_forward_refuses_bad_options():
    runner = CliRunner()
    bad = runner.invoke(main, ["forward", "--prometheus", PROM, "--query", "load=node_load1"])
    assert bad.exit_code == 2 and "expected METRIC=PROMQL" in bad.output
    unset = runner.invoke(main, ["forward", "--prometheus", PROM, "--api-key-env", "WORKBENCH_UNSET_KEY_VAR"])
    assert unset.exit_code == 1 and "WORKBENCH_UNSET_KEY_VAR" in unset.output


def test_forward_runs_its_cycles_and_reports_an_unreachable_prometheus(caplog):
    closed = f"http://127.0.0.1:{free_port()}"
    args = ["forward", "--prometheus", closed, "--daemon", closed, "--cycles", "2", "--interval", "0"]
    with caplog.at_level(logging.INFO, LOGGER):
        result = CliRunner().invoke(main, [*args, "--query", "disk_pct=", "--query", "error_rate=up * 0"])
    assert result.exit_code == 0, result.output
    assert "forwarding cpu_pct, mem_pct, disk_io_mb_s, net_in_mb_s, net_out_mb_s, error_rate from" in caplog.text
    failed = [r.message for r in caplog.records if r.message.startswith("queries failed")]
    assert failed == ["queries failed: cpu_pct, mem_pct, disk_io_mb_s, net_in_mb_s, net_out_mb_s, error_rate"] * 2


# --------------------------------------------------------------------------- end to end

NODE_COLLECTORS = ["cpu", "meminfo", "filesystem", "diskstats", "netdev"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.TransportError, ValueError, KeyError, IndexError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def launch(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=out, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def meminfo_pct() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = {k: float(v.split()[0]) for k, v in fields.items() if k in ("MemTotal", "MemAvailable")}
    return 100 * (1 - kib["MemAvailable"] / kib["MemTotal"])


@pytest.mark.slow
def test_node_exporter_through_prometheus_into_the_daemon(tmp_path, caplog):
    """node_exporter -> Prometheus (1 s scrapes) -> forwarder -> ``workbench serve``: this machine's metrics arrive.

    A complete 5-minute step exists only once a step boundary has passed since Prometheus started,
    so the forwarder's clock is moved forward to the end of the step in progress; Prometheus gets
    a 15-minute look-back and the rate queries ``irate(...[15m])``, so values evaluated at that
    moment (in the future by up to 5 min) come from the samples scraped so far.
    """
    exporter_bin, prometheus_bin = tool(NODE_EXPORTER), tool(PROMETHEUS)
    node_port, prom_port, daemon_port = free_port(), free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: node, static_configs: [{{targets: ['127.0.0.1:{node_port}']}}]}}\n"
    )
    exporter_args = ["--collector.disable-defaults", *(f"--collector.{name}" for name in NODE_COLLECTORS)]
    procs = [
        launch([exporter_bin, f"--web.listen-address=127.0.0.1:{node_port}", *exporter_args], tmp_path / "node.log"),
        launch(
            [
                prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--query.lookback-delta=15m",
            ],
            tmp_path / "prometheus.log",
        ),
        launch(
            [
                sys.executable, "-m", "workbench.cli", "serve", "--bundle", str(DEMO), "--port", str(daemon_port),
                "--no-state", "--device", "cpu", "--forecast-worker", "thread", "--log-level", "warning",
            ],
            tmp_path / "serve.log",
        ),
    ]  # fmt: skip
    prom_url, daemon_url = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{daemon_port}"
    queries = {
        "cpu_pct": '100 * (1 - avg by (instance) (irate(node_cpu_seconds_total{mode="idle"}[15m])))',
        "mem_pct": ps.DEFAULT_QUERIES["mem_pct"],
        "disk_io_mb_s": ps.DEFAULT_QUERIES["disk_io_mb_s"].replace("rate(", "irate(").replace("[5m]", "[15m]"),
    }
    try:
        cpu_now = queries["cpu_pct"]
        wait_for(
            lambda: httpx.get(f"{prom_url}/api/v1/query", params={"query": cpu_now}).json()["data"]["result"],
            90,
            "Prometheus to hold two scrapes of node_exporter",
        )
        wait_for(lambda: httpx.get(f"{daemon_url}/health").json()["running"], 120, "the inference daemon")
        boundary = (time.time() // 300 + 1) * 300  # the end of the step in progress
        shift = boundary + 60 - time.time()  # the forwarder reads a step 60 s (its lag) after it ends
        with httpx.Client(timeout=10) as prom, httpx.Client(base_url=daemon_url, timeout=10) as feed:
            fwd = ps.PrometheusForwarder(
                prom, ps.FeedClient(feed), base_url=prom_url, queries=queries, backfill_steps=2,
                clock=lambda: time.time() + shift,
            )  # fmt: skip
            with caplog.at_level(logging.INFO, LOGGER):
                first, second = fwd.cycle(), fwd.cycle()
        assert not first.failed and first.accepted >= 1 and not first.refused, caplog.text
        assert second.last is None and second.records == 0  # nothing new within the same step
        assert "note: 127.0.0.1 matches no profile prefix" in caplog.text
        doc = httpx.get(f"{daemon_url}/history/127.0.0.1").json()
        newest = doc["timestamps"][-1]
        assert newest == datetime.fromtimestamp(boundary - 300, UTC).isoformat()
        cpu, mem, io = (doc["metrics"][m][-1] for m in ("cpu_pct", "mem_pct", "disk_io_mb_s"))
        assert 0 <= cpu <= 100 and io >= 0 and not math.isnan(cpu)
        assert abs(mem - meminfo_pct()) < 10  # this machine's memory, as node_exporter read it
        assert doc["profile"] == "generic"
        status = httpx.get(f"{daemon_url}/status").json()
        assert status["ingest"]["records_accepted"] == first.accepted and "127.0.0.1" in status["warmup"]["servers"]
    finally:
        for proc in procs:
            stop(proc)
    assert all(proc.returncode is not None for proc in procs)
