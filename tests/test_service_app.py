"""The inference daemon in process (FastAPI TestClient): every endpoint's shape, warm-up, restart, limits."""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from workbench.errors import ConfigError, StateError
from workbench.model import load_bundle
from workbench.service.generator_app import encode_step
from workbench.service.inference_app import create_app
from workbench.service.settings import InferenceSettings
from workbench.simulator import FleetStream

SERVERS = 6
ENDPOINTS = ["/feed/data", "/predictions/current", "/alerts/active", "/health", "/status", "/metrics"]


def steps(n: int, start: int = 0) -> list[bytes]:
    stream = FleetStream(SERVERS, seed=4)
    bodies = [encode_step(next(stream)) for _ in range(start + n)]
    return bodies[start:]


def step_time(k: int) -> str:
    """ISO time of the stream's step ``k`` (0-based), as ``metadata.data_time`` writes it."""
    return f"2025-01-06T{k * 5 // 60:02d}:{k * 5 % 60:02d}:00+00:00"


def forecast_from(client: TestClient, k: int):
    doc = tft_ready(client)
    return doc if doc and doc["metadata"]["data_time"] == step_time(k) else None


def feed(client: TestClient, bodies: list[bytes]) -> dict:
    for body in bodies:
        response = client.post("/feed/data", content=body)
        assert response.status_code == 200, response.text
    return response.json()


def wait_for(predicate, timeout: float = 60.0):  # a liveness bound, generous for a loaded CI box
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def tft_ready(client: TestClient):
    doc = client.get("/predictions/current").json()
    sources = {m["source"] for entry in doc["predictions"].values() for m in entry.values()}
    return doc if doc["predictions"] and sources == {"tft"} else None


def test_before_any_data_the_daemon_says_so_honestly(make):
    with TestClient(make()) as client:
        doc = client.get("/predictions/current").json()
        assert doc["predictions"] == {} and doc["alerts"] == []
        assert doc["metadata"]["status"] == "no_data" and doc["metadata"]["prediction_time"] is None
        assert doc["environment"]["fleet_health"] == "unknown" and doc["environment"]["total_servers"] == 0
        assert client.get("/alerts/active").json() == {"timestamp": None, "count": 0, "alerts": []}
        assert client.get("/health").json() == {
            "status": "healthy",
            "service": "workbench-inference",
            "running": True,
            "problems": [],
        }
        status = client.get("/status").json()
        assert status["running"] and status["tick_count"] == 0 and status["warmup"]["is_warmed_up"] is False


def test_warm_up_then_tft_forecasts_in_the_rest_shape(make, bundle):
    with TestClient(make()) as client:
        answer = feed(client, steps(5))
        assert answer["tick"] == 5 and answer["servers"] == SERVERS
        warming = wait_for(lambda: client.get("/predictions/current").json()["predictions"])
        entry = next(iter(warming.values()))
        assert {m["source"] for m in entry.values()} == {"warming_up"}
        assert set(entry["cpu_pct"]) == {"source", "history_steps", "needed_steps"}  # no made-up numbers
        feed(client, steps(bundle.spec.min_encoder_length, start=5))
        doc = wait_for(lambda: forecast_from(client, 16))
        assert set(doc) == {"predictions", "alerts", "environment", "server_risk", "metadata"}
        assert len(doc["predictions"]) == SERVERS
        forecast = next(iter(doc["predictions"].values()))["mem_pct"]
        assert {"p10", "p50", "p90", "current", "trend", "source"} <= set(forecast)
        assert len(forecast["p50"]) == 96 and forecast["p10"][0] <= forecast["p50"][0] <= forecast["p90"][0]
        meta = doc["metadata"]
        keys = {"model_type", "bundle", "contract_version", "prediction_time", "horizon_steps", "device"}
        assert keys <= set(meta) and meta["status"] == "ok" and meta["horizon_steps"] == 96
        env = doc["environment"]
        assert {"incident_probability_30m", "incident_probability_8h", "high_risk_servers", "total_servers"} <= set(env)
        assert env["fleet_health"] in ("healthy", "degraded", "critical")
        alerts = client.get("/alerts/active").json()
        assert alerts["count"] == len(alerts["alerts"]) and alerts["timestamp"] == meta["prediction_time"]


def test_the_served_document_equals_forecast_to_json(make, bundle):
    app = make()
    with TestClient(app) as client:
        feed(client, steps(bundle.spec.min_encoder_length + 1))
        doc = wait_for(lambda: forecast_from(client, 12))
        forecast, alerts = app.state.daemon.predictor.backend.last
        assert doc["predictions"] == json.loads(json.dumps(forecast.to_json()))
        assert doc["alerts"] == [a.to_dict() for a in alerts]


def test_forecasts_run_in_a_worker_process_that_is_restarted_after_a_crash_or_a_hang(make, bundle):
    app = make(forecast_worker="process", worker_reply_seconds=120.0)
    need = bundle.spec.min_encoder_length
    with TestClient(app) as client:
        feed(client, steps(need))
        doc = wait_for(lambda: forecast_from(client, need - 1), timeout=180)  # the worker imports torch first
        assert doc["metadata"]["forecast_worker"] == "process"
        summary = client.get("/predictions/current", params={"view": "summary"}).json()  # the index crossed the pipe
        assert set(summary["servers"]) == set(doc["predictions"])
        worker = client.get("/status").json()["forecast_worker"]
        assert worker["mode"] == "process" and worker["pid"] not in (None, os.getpid()) and worker["restarts"] == 0
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert len(families["workbench_forecast_cpu_ratio"].samples) == SERVERS * 4 * 3
        os.kill(worker["pid"], signal.SIGKILL)
        feed(client, steps(1, start=need))
        wait_for(lambda: forecast_from(client, need), timeout=180)
        status = client.get("/status").json()
        assert status["forecast_worker"]["restarts"] == 1 and status["forecast_worker"]["pid"] != worker["pid"]
        assert status["predictor"]["errors"] <= 1  # the request in flight at the kill, if any
        app.state.daemon.worker.reply_seconds = 5.0  # warm now: a forecast takes well under a second
        os.kill(status["forecast_worker"]["pid"], signal.SIGSTOP)  # hung: alive, silent
        feed(client, steps(1, start=need + 1))
        wait_for(lambda: forecast_from(client, need + 1), timeout=180)
        status = client.get("/status").json()
        assert status["forecast_worker"]["hangs"] == 1 and status["forecast_worker"]["restarts"] == 2
    assert app.state.daemon.worker.pid is None  # stopped with the daemon


def test_status_reports_warm_up_and_fleet(make, bundle):
    with TestClient(make()) as client:
        feed(client, steps(bundle.spec.min_encoder_length))
        status = client.get("/status").json()
        assert status["tick_count"] == bundle.spec.min_encoder_length
        assert status["window_size"] == SERVERS * bundle.spec.min_encoder_length
        warmup = status["warmup"]
        assert warmup["is_warmed_up"] and warmup["progress_percent"] == 100.0 and warmup["threshold"] == 12
        assert status["fleet"]["fleet_status"] == f"{SERVERS}/{SERVERS} servers ready"
        assert status["ingest"]["records_accepted"] == SERVERS * bundle.spec.min_encoder_length


def test_metrics_parse_as_prometheus_text(make, bundle):
    with TestClient(make()) as client:
        feed(client, steps(bundle.spec.min_encoder_length))
        client.post("/feed/data", json={"records": [{"server_name": "x"}]})
        wait_for(lambda: forecast_from(client, 11))
        response = client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        forecast = families["workbench_forecast_latency_seconds"].samples
        assert len(forecast) == SERVERS * 4 * 3
        assert {s.labels["horizon"] for s in forecast} == {"30m", "1h", "4h", "8h"}
        assert {s.labels["band"] for s in forecast} == {"p10", "p50", "p90"}
        assert set(forecast[0].labels) == {"instance", "band", "horizon"}
        assert len(families["workbench_observed_latency_seconds"].samples) == SERVERS
        for name in ("workbench_alert", "workbench_incident_probability", "workbench_warmup_ready_servers"):
            assert name in families
        assert families["workbench_warmup_ready_servers"].samples[0].value == SERVERS
        accepted = families["workbench_records_accepted"].samples[0]
        assert accepted.name == "workbench_records_accepted_total" and accepted.value == SERVERS * 12
        assert families["workbench_records_rejected"].samples[0].value == 1
        windows = {s.labels["window"] for s in families["workbench_incident_probability"].samples}
        assert windows == {"30m", "8h"}


def test_websocket_pushes_each_new_prediction(make, bundle):
    with TestClient(make()) as client:
        feed(client, steps(bundle.spec.min_encoder_length))
        wait_for(lambda: forecast_from(client, 11))
        full, summary = (client.websocket_connect(f"/ws/predictions{q}") for q in ("", "?summary=1"))
        with full as ws, summary as small:
            first = json.loads(ws.receive_text())  # the latest, on connect
            assert set(first) == {"predictions", "alerts", "environment", "server_risk", "metadata"}
            assert set(json.loads(small.receive_text())) == {"metadata", "environment", "alerts"}
            feed(client, steps(1, start=bundle.spec.min_encoder_length))
            pushed = json.loads(ws.receive_text())
            assert pushed["metadata"]["version"] > first["metadata"]["version"]
            assert pushed["metadata"]["data_time"] > first["metadata"]["data_time"]
            assert json.loads(small.receive_text())["metadata"]["version"] == pushed["metadata"]["version"]


def test_openapi_describes_every_endpoint(make):
    with TestClient(make(max_records=123)) as client:
        doc = client.get("/openapi.json").json()
    assert set(ENDPOINTS + ["/ws/predictions"]) <= set(doc["paths"])
    feed_op = doc["paths"]["/feed/data"]["post"]
    schema = feed_op["requestBody"]["content"]["application/json"]["schema"]
    records = schema["properties"]["records"]
    assert records["maxItems"] == 123 and records["items"]["required"] == ["timestamp", "server_name"]
    props = records["items"]["properties"]
    assert props["cpu_pct"]["maximum"] == 100 and props["cpu_percent"]["description"].startswith("alias of cpu_pct")
    assert "offline" in props["state"]["enum"]
    assert {"200", "401", "413", "422"} <= set(feed_op["responses"])
    assert "APIKeyHeader" in doc["components"]["securitySchemes"]
    current = doc["paths"]["/predictions/current"]["get"]["responses"]["200"]["content"]["application/json"]
    assert {ref["$ref"].rsplit("/", 1)[-1] for ref in current["schema"]["anyOf"]} == {
        "PredictionsResponse",
        "PredictionsSummaryResponse",  # ?view=summary
    }


def test_oversized_bodies_get_413_and_the_daemon_keeps_serving(make):
    with TestClient(make(max_body_bytes=4096, max_records=3)) as client:
        big = json.dumps({"records": [{"server_name": "x" * 100}] * 50}).encode()
        response = client.post("/feed/data", content=big)
        assert response.status_code == 413 and "limit" in response.json()["detail"]
        chunked = client.post("/feed/data", content=iter([big[:3000], big[3000:]]))  # no Content-Length
        assert chunked.status_code == 413
        many = client.post("/feed/data", json={"records": [{}] * 4})
        assert many.status_code == 413 and "at most 3" in many.json()["detail"]
        assert client.post("/feed/data", content=b"{oops").status_code == 400
        assert client.get("/health").json()["running"]
        assert client.get("/status").json()["ingest"]["bodies_refused"] == {"413": 3, "400": 1}


def test_writes_need_the_api_key_when_one_is_set(make):
    body = steps(1)[0]
    with TestClient(make(api_key="s3cret")) as client:
        assert client.post("/feed/data", content=body).status_code == 401
        wrong = client.post("/feed/data", content=body, headers={"X-API-Key": "s3cre"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "missing or invalid X-API-Key"
        assert client.get("/status").json()["tick_count"] == 0
        assert client.post("/feed/data", content=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        for path in ENDPOINTS[1:]:
            assert client.get(path).status_code == 200  # reads stay open
    with TestClient(make(api_key=None, state_dir=None)) as client:
        assert client.post("/feed/data", content=body).status_code == 200


def test_a_restart_resumes_forecasting_without_a_new_warm_up(make, bundle):
    with TestClient(make()) as client:
        feed(client, steps(bundle.spec.min_encoder_length + 2))
    with TestClient(make()) as client:  # the graceful shutdown wrote a snapshot; nothing is fed now
        status = client.get("/status").json()
        assert status["warmup"]["is_warmed_up"] and status["tick_count"] == bundle.spec.min_encoder_length + 2
        wait_for(lambda: forecast_from(client, 13))


def test_after_a_crash_the_log_alone_restores_every_acknowledged_batch(make, bundle):
    app = make()
    client = TestClient(app)  # no lifespan: no predictor, no snapshot, as in a process killed mid-feed
    feed(client, steps(bundle.spec.min_encoder_length))
    daemon = app.state.daemon
    daemon.ingestor.journal.close()
    daemon.state_dir.close()
    daemon.state_dir = None
    with TestClient(make()) as again:
        state = again.get("/status").json()
        assert state["state"]["replayed_batches"] == bundle.spec.min_encoder_length
        assert state["warmup"]["is_warmed_up"] and state["ingest"]["records_total"] == SERVERS * 12
        wait_for(lambda: forecast_from(again, 11))


def test_a_state_folder_of_another_bundle_is_refused(make, tmp_path):
    with TestClient(make()) as client:
        feed(client, steps(2))
    meta = json.loads((tmp_path / "state" / "snapshot.json").read_text())
    meta["bundle"]["targets"] = meta["bundle"]["targets"][:2]
    (tmp_path / "state" / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(StateError, match="another contract or bundle"):
        make()
    make(state_dir=tmp_path / "fresh").state.daemon.close()


def test_a_failing_log_answers_503_and_stores_nothing(make):
    app = make()
    with TestClient(app) as client:
        journal = app.state.daemon.ingestor.journal

        def broken(frame):
            raise StateError("disk full")

        journal.append = broken
        assert client.get("/health").status_code == 200
        response = client.post("/feed/data", content=steps(1)[0])
        assert response.status_code == 503 and "disk full" in response.json()["detail"]
        assert app.state.daemon.ingestor.store.servers == []
        health = client.get("/health")  # health means health: the folder cannot be written
        assert health.status_code == 503 and "disk full" in health.json()["problems"][0]
        del journal.append
        assert client.post("/feed/data", content=steps(1)[0]).status_code == 200
        assert client.get("/health").status_code == 200


def test_paths_and_pids_are_shown_only_with_the_key(make, monkeypatch):
    app = make(api_key="secret")
    with TestClient(app) as client:
        anonymous = client.get("/status").json()
        assert anonymous["state"]["state_dir"] is None and anonymous["state"]["persisted"]
        keyed = client.get("/status", headers={"X-API-Key": "secret"}).json()
        assert keyed["state"]["state_dir"].endswith("state")
        assert "bundle_path" not in client.get("/predictions/current").json()["metadata"]


def test_with_an_interval_forecasts_follow_the_clock_not_the_steps(make, bundle):
    app = make(interval=0.3)
    with TestClient(app) as client:
        feed(client, steps(bundle.spec.min_encoder_length))
        wait_for(lambda: forecast_from(client, 11))
        count = app.state.daemon.predictor.predictions
        time.sleep(0.5)
        assert app.state.daemon.predictor.predictions == count  # no new data: no new forecast
        assert client.get("/status").json()["predictor"]["interval"] == 0.3


def test_an_uncalibrated_bundle_says_so_and_alerts_on_the_band_edge(make, bundle):
    assert bundle.incidents is None
    with TestClient(make()) as client:
        feed(client, steps(bundle.spec.min_encoder_length + 1))
        doc = wait_for(lambda: tft_ready(client))
        assert doc["environment"]["probabilities"] == "uncalibrated"
        assert doc["metadata"]["alert_rule"] == "band_edge" and doc["metadata"]["probabilities"] == "uncalibrated"
    with pytest.raises(ConfigError, match="incident calibration"):
        make(alert_rule="calibrated")


def test_a_calibrated_bundle_serves_calibrated_probabilities_and_rule(make, tiny_bundle_dir, tmp_path):
    from workbench.early_warning import IncidentCalibration
    from workbench.early_warning.calibrator import WINDOW_STEPS, Isotonic, Logistic, WindowModel
    from workbench.early_warning.features import FEATURES
    from workbench.model.bundle import save_calibration

    f = len(FEATURES)
    score = Logistic(np.zeros(f), np.ones(f), np.eye(f)[0] * 2.0, -4.0)  # rises with the current value
    knots = np.linspace(-10, 10, 41)
    sigmoid, identity = Isotonic(knots, 1 / (1 + np.exp(-knots))), Isotonic(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    window = WindowModel(6, {"*": score}, sigmoid, identity)
    calibrated_dir = tmp_path / "calibrated"
    shutil.copytree(tiny_bundle_dir, calibrated_dir)
    calibrated = load_bundle(calibrated_dir, device="cpu")
    calibrated.incidents = IncidentCalibration(
        dict.fromkeys(WINDOW_STEPS, window), alert={"window": "8h", "threshold": 0.5}
    )
    save_calibration(calibrated, calibrated_dir)
    reloaded = load_bundle(calibrated_dir, device="cpu")
    assert reloaded.incidents is not None
    app = create_app(
        InferenceSettings(
            bundle=calibrated_dir, state_dir=None, device="cpu", poll_seconds=0.02, forecast_worker="thread"
        ),
        bundle=reloaded,
    )
    with TestClient(app) as client:
        feed(client, steps(reloaded.spec.min_encoder_length + 1))
        doc = wait_for(lambda: tft_ready(client))
        assert doc["environment"]["probabilities"] == "calibrated"
        assert doc["metadata"]["alert_rule"] == "calibrated"
        risks = [r for r in doc["server_risk"].values() if r.get("risk_score") is not None]
        assert risks and all(0 <= r["p_critical_30m"] <= 1 for r in risks)
        assert {a["rule"] for a in doc["alerts"]} <= {"calibrated"}
