"""GET /history in process (FastAPI TestClient): accepted rows, forecasts at horizons, alert transitions."""

from __future__ import annotations

import errno
import functools
import io
from datetime import timedelta

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_service_app import SERVERS, feed, forecast_from, step_time, steps, tft_ready, wait_for

from workbench.dashboard import DaemonClient, FleetDashboard, hindsight
from workbench.dashboard.documents import parse_time, plot_time
from workbench.service.archive import Archive
from workbench.service.horizon_points import ARCHIVED_STEPS

RANGE = {"start": "2025-01-06T00:00:00Z", "end": "2025-01-06T12:00:00Z"}


@pytest.fixture
def make(make, tmp_path):
    """The shared daemon factory (conftest), keeping its history under tmp_path."""
    return functools.partial(make, history_dir=tmp_path / "history")


def rows(client: TestClient, **params) -> list[dict]:
    response = client.get("/history", params=params)
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def test_history_returns_the_accepted_records_and_never_a_refused_one(make):
    with TestClient(make()) as client:
        feed(client, steps(3))
        good = {"timestamp": "2025-01-06T00:10:00Z", "server_name": "extra01", "cpu_pct": 12.5}
        refused = {**good, "server_name": "extra02", "cpu_pct": 250.0}
        answer = client.post("/feed/data", json={"records": [good, refused]})
        assert answer.status_code == 422 and answer.json()["records_added"] == 1
        doc = client.get("/history", params={"kind": "metrics", **RANGE}).json()
        assert doc["count"] == SERVERS * 3 + 1 and not doc["truncated"] and doc["kind"] == "metrics"
        found = {r["server_name"] for r in doc["rows"]}
        assert "extra01" in found and "extra02" not in found and len(found) == SERVERS + 1
        extra = next(r for r in doc["rows"] if r["server_name"] == "extra01")
        assert extra["timestamp"] == "2025-01-06T00:10:00+00:00" and extra["cpu_pct"] == 12.5
        some = sorted(found - {"extra01"})[:2]
        chosen = rows(client, kind="metrics", server=some)  # the default range: the day before the newest row
        assert {r["server_name"] for r in chosen} == set(some) and len(chosen) == 6
        assert [r["timestamp"] for r in chosen] == sorted(r["timestamp"] for r in chosen)
        cut = client.get("/history", params={"kind": "metrics", **RANGE, "limit": 4}).json()
        assert cut["truncated"] and cut["count"] == 4 and cut["rows"] == doc["rows"][:4]
        csv = client.get("/history", params={"kind": "metrics", **RANGE, "format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv") and csv.headers["x-history-truncated"] == "false"
        assert pl.read_csv(io.BytesIO(csv.content)).height == doc["count"]
        parquet = client.get("/history", params={"kind": "metrics", **RANGE, "format": "parquet"})
        assert pl.read_parquet(io.BytesIO(parquet.content))["server_name"].to_list() == [
            r["server_name"] for r in doc["rows"]
        ]
        assert client.get(f"/history/{some[0]}").json()["server"] == some[0]  # the live windows, as before
        status = client.get("/status").json()["history"]
        assert status["enabled"] and status["buffered_rows"]["metrics"] + status["rows_written"]["metrics"] == 19


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("start=yesterday", "start='yesterday' must be an ISO 8601 time"),
        ("start=2025-01-06T00:00:00Z&end=2025-01-05T00:00:00Z", "lies before start"),
        ("start=2025-01-01T00:00:00Z&end=2025-03-01T00:00:00Z", "spans more than 31 days"),
    ],
)
def test_bad_times_get_422_with_the_reason(make, query, message):
    with TestClient(make()) as client:
        response = client.get(f"/history?kind=metrics&{query}")  # Z times: nothing to escape
        assert response.status_code == 422 and message in response.json()["detail"]
        assert client.get("/history?kind=nonsense").status_code == 422


def test_without_a_history_folder_the_route_says_how_to_get_one(make):
    with TestClient(make(history_dir=None)) as client:
        response = client.get("/history?kind=metrics")
        assert response.status_code == 404 and "--history-dir" in response.json()["detail"]
        assert client.get("/status").json()["history"] == {"enabled": False}


@pytest.mark.parametrize("worker", ["thread", "process"])  # process: the points cross the worker's pipe
def test_each_forecast_is_archived_at_the_chosen_horizons(make, bundle, worker):
    need = bundle.spec.min_encoder_length
    with TestClient(make(forecast_worker=worker)) as client:
        feed(client, steps(need))
        doc = wait_for(lambda: forecast_from(client, need - 1), timeout=180)  # a worker imports torch first
        origin = doc["metadata"]["data_time"]
        found = wait_for(lambda: rows(client, kind="forecasts", start=origin, end=origin))
        assert len(found) == SERVERS * len(bundle.targets) * len(ARCHIVED_STEPS)
        for row in found:
            entry = doc["predictions"][row["server_name"]][row["metric"]]
            k = row["step"] - 1
            assert row["timestamp"] == origin
            assert parse_time(row["target_time"]) == parse_time(origin) + timedelta(minutes=5 * row["step"])
            for q in ("p10", "p50", "p90"):
                assert row[q] == pytest.approx(entry[q][k], abs=1e-3)


def test_a_raised_alert_is_archived_as_a_transition(make, bundle, tmp_path):
    levels = tmp_path / "levels.yaml"
    levels.write_text("levels:\n  mem_pct: {warning: 1, critical: 2}\n")  # every server alerts on memory
    with TestClient(make(thresholds=levels, alert_rule="band_edge")) as client:
        feed(client, steps(bundle.spec.min_encoder_length))
        doc = wait_for(lambda: (d := tft_ready(client)) and d["alerts"] and d)
        raised = wait_for(lambda: [r for r in rows(client, kind="alerts") if r["metric"] == "mem_pct"])
        assert {r["server_name"] for r in raised} == set(doc["predictions"])
        assert {(r["transition"], r["severity"], r["previous_severity"]) for r in raised} == {
            ("raised", "critical", None)
        }
        assert all(r["timestamp"] == doc["metadata"]["data_time"] for r in raised)


def test_the_archive_is_written_on_shutdown_and_read_after_a_restart(make, bundle, tmp_path):
    need = bundle.spec.min_encoder_length
    with TestClient(make()) as client:
        feed(client, steps(need))
        wait_for(lambda: forecast_from(client, need - 1))
        wait_for(lambda: rows(client, kind="forecasts"))
        before = {kind: rows(client, kind=kind) for kind in ("metrics", "forecasts")}
    assert list((tmp_path / "history" / "metrics" / "date=2025-01-06").glob("part-*.parquet"))
    with TestClient(make()) as client:
        for kind, earlier in before.items():
            assert rows(client, kind=kind) == earlier
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        written = {s.labels["kind"]: s.value for s in families["workbench_history_rows"].samples}
        assert written == {"metrics": 0, "forecasts": 0, "alerts": 0}  # this process wrote nothing yet
        assert families["workbench_history_buffered_rows"].samples[0].value == 0


def test_a_full_disk_shows_in_health_while_the_feed_goes_on(make, monkeypatch):
    app = make()
    with TestClient(app) as client:
        archive = app.state.daemon.archive

        def disk_full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Archive, "_write", disk_full)
        feed(client, steps(2))
        archive.flush()
        health = client.get("/health")
        assert health.status_code == 503 and "history archive cannot write" in health.json()["problems"][0]
        feed(client, steps(1, start=2))  # writes never wait for the archive
        assert client.get("/status").json()["history"]["flush_failures"] >= 1
        assert len(rows(client, kind="metrics")) == SERVERS * 3
        monkeypatch.undo()
        archive.flush()
        assert client.get("/health").status_code == 200


def test_the_fan_chart_overlays_the_forecast_issued_hours_ago(make, bundle):
    need, later = bundle.spec.min_encoder_length, 24  # forecasts for 2 h after the first one
    with TestClient(make()) as daemon:
        for k in range(need + later):
            feed(daemon, steps(1, start=k))
            if k >= need - 1:
                wait_for(lambda k=k: forecast_from(daemon, k))
        then = step_time(need + later - 1 - 24)  # the newest step, 2 h earlier
        wait_for(lambda: rows(daemon, kind="forecasts", start=then, end=then))
        no_generator = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(404)))
        client = DaemonClient("http://daemon", "http://generator", daemon_http=daemon, generator_http=no_generator)
        board = FleetDashboard(client, history_steps=48)
        board.refresh()
        view, server = board.server_view, board.fleet.selected_server
        assert len(view.trace("then").y) == 0 and "forecast from" not in view.title
        view.compare_hours = 2
        archived = {
            r["step"]: r
            for r in rows(daemon, kind="forecasts", server=server, start=then, end=then)
            if r["metric"] == view.metric
        }
        trace = view.trace("then")
        assert list(trace.x) == [plot_time(parse_time(archived[s]["target_time"])) for s in ARCHIVED_STEPS]
        assert list(trace.y) == pytest.approx([archived[s]["p50"] for s in ARCHIVED_STEPS])
        assert list(trace.error_y.array) == pytest.approx(
            [archived[s]["p90"] - archived[s]["p50"] for s in ARCHIVED_STEPS]
        )
        assert plot_time(parse_time(then)) in view.title and "2 h ago" in view.title
        view.compare_hours = 8  # before the first forecast: nothing archived, and the chart says so
        assert len(view.trace("then").y) == 0 and "none archived" in view.title
        board.close()


def test_hindsight_picks_the_newest_forecast_issued_at_or_before_the_time_asked():
    def row(origin: str, step: int, p50: float) -> dict:
        target = (parse_time(origin) + timedelta(minutes=5 * step)).isoformat()
        return {"timestamp": origin, "metric": "cpu_pct", "step": step, "target_time": target,
                "p10": p50 - 1, "p50": p50, "p90": p50 + 2}  # fmt: skip

    at = parse_time("2025-01-06T02:00:00+00:00")
    archived = [row("2025-01-06T01:50:00+00:00", s, 10.0) for s in (6, 12)]
    archived += [row("2025-01-06T01:55:00+00:00", s, 20.0 + s) for s in (12, 6)]
    archived += [row("2025-01-06T02:05:00+00:00", 6, 99.0)]  # issued after the time asked: not hindsight
    past = hindsight.past_forecast(archived, at)
    assert past["origin"] == "2025-01-06T01:55:00+00:00"
    entry = past["metrics"]["cpu_pct"]
    assert entry["steps"] == [6, 12] and entry["p50"] == [26.0, 32.0]
    assert entry["x"] == ["2025-01-06 02:25:00", "2025-01-06 02:55:00"]
    assert hindsight.error_bars(entry)["array"] == [2.0, 2.0] and hindsight.error_bars(entry)["arrayminus"] == [
        1.0,
        1.0,
    ]
    assert hindsight.past_forecast(archived, parse_time("2025-01-06T01:00:00+00:00")) == {}
