"""Drift: forecasts scored as actuals arrive, inputs against training, the state and its rule."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_service_app import feed, forecast_from, steps, wait_for

from workbench import contract as c
from workbench.drift import (
    DRIFT_FILE,
    DriftMonitor,
    DriftReference,
    InputReference,
    read_drift_reference,
)
from workbench.errors import BundleError
from workbench.forecast import Forecast
from workbench.inference.engine import Engine
from workbench.inference.window import WindowStore
from workbench.model import load_bundle
from workbench.service.inference_app import create_app
from workbench.service.prom import render_drift
from workbench.service.settings import InferenceSettings
from workbench.simulator import FleetStream

DEMO = Path("models/demo")
SERVERS = 16


@pytest.fixture(scope="module")
def demo():
    return load_bundle(DEMO, device="cpu")


def rotate_profiles(frame: pl.DataFrame, profiles: list[str]) -> pl.DataFrame:
    """Label every server with the next profile: its data now follows another profile's pattern."""
    shift = {p: profiles[(i + 1) % len(profiles)] for i, p in enumerate(profiles)}
    return frame.with_columns(pl.col(c.PROFILE).replace(shift))


def test_the_committed_demo_bundle_has_a_drift_reference():
    reference = read_drift_reference(DEMO)
    assert reference.inputs is not None and reference.accuracy is not None
    ratios = [f["ratio"] for per in reference.accuracy.values() for f in per.values()]
    assert all(0 < r < 1 for r in ratios), "the demo model beats a climatological band on its validation period"


def test_steady_data_keeps_its_state_for_two_days_and_another_profile_shifts_it_within_two_hours(demo):
    engine, reference = Engine(demo), read_drift_reference(DEMO)
    store = WindowStore(demo.spec.max_encoder_length, demo.spec.targets)
    monitor = DriftMonitor(tuple(demo.spec.targets), reference)
    stream = FleetStream(SERVERS, seed=3)
    profiles = sorted(set(reference.inputs.bounds) - {"*"})
    states = []
    warm, steady, after = 96, 2 * 288, 24  # 8 h of warm-up, then two days, then two hours
    for k in range(warm + steady + after):
        frame = next(stream)
        store.ingest(rotate_profiles(frame, profiles) if k >= warm + steady else frame)
        if k % 3 == 2:  # the predictor may skip steps under load; every third is plenty here
            monitor.observe(engine.forecast(store=store), store)
            states.append((k, monitor.report()))
    before = [r["state"] for k, r in states if warm <= k < warm + steady]
    assert set(before) == {"fits"}, [(k, r["state"], r["reasons"]) for k, r in states if r["state"] != "fits"]
    scored = next(r for k, r in states if k >= warm + steady - 3)["accuracy"]
    assert all(f["scores"] > 100 for per in scored.values() for f in per.values())  # the accuracy check was live
    shifted = [k for k, r in states if k >= warm + steady and r["state"] != "fits"]
    assert shifted and shifted[0] - (warm + steady) < 24, "the state changes within two hours of fleet time"
    last = states[-1][1]
    assert last["state"] in ("inputs_shifted", "no_longer_fits") and last["inputs"]["share"] >= 0.5
    assert any("inputs unlike training" in reason for reason in last["reasons"])
    json.dumps(last)  # the document is plain JSON


NAMES = [f"s{i}" for i in range(6)]


def forecast_of(values: np.ndarray, last: int, offset: float, spread: float) -> Forecast:
    """A forecast of six servers with the same series, one metric, its median ``offset`` above the truth."""
    h = c.HORIZON_STEPS
    truth = values[last + 1 : last + 1 + h]
    truth = np.pad(truth, (0, h - len(truth)), mode="edge")
    q = np.stack([truth + offset - spread, truth + offset, truth + offset + spread], -1)
    n = len(NAMES)
    return Forecast(
        servers=NAMES,
        profiles=["web_api"] * n,
        targets=("cpu_pct",),
        last_step=np.full(n, last),
        quantiles=np.repeat(q[None, None], n, axis=0),
        current=np.full((n, 1), values[last]),
        baseline=np.tile([values[: last + 1].mean(), 10.0], (n, 1, 1)),
    )


@pytest.mark.parametrize(("offset", "state"), [(0.0, "fits"), (40.0, "no_longer_fits")])
def test_the_accuracy_rule_tells_a_model_that_fits_from_one_that_does_not(offset, state):
    rng = np.random.default_rng(0)
    values = 50 + 10 * np.sin(np.arange(2000) / 40) + rng.normal(0, 1, 2000)
    store = WindowStore(96, ("cpu_pct",))
    monitor = DriftMonitor(("cpu_pct",))  # no reference: absolute limits
    for k in range(900):
        row = {
            c.TIMESTAMP: [c.step_time(k)] * 6,
            c.SERVER: NAMES,
            c.PROFILE: ["web_api"] * 6,
            "cpu_pct": [values[k]] * 6,
        }
        store.ingest(pl.DataFrame(row).with_columns(pl.col(c.TIMESTAMP).dt.cast_time_unit("us")))
        if k >= 96:
            monitor.observe(forecast_of(values, k, offset, 2.0), store)
    report = monitor.report()
    assert report["state"] == state, report["reasons"]
    figures = report["accuracy"]["0-1h"]["cpu_pct"]
    assert (figures["ratio"] < 1) == (offset == 0.0) and report["accuracy_reference"] == "absolute limits"
    if state == "no_longer_fits":
        assert any(reason.startswith("cpu_pct") for reason in report["reasons"])
    families = {f.name: f for f in text_string_to_metric_families(render_drift(report).decode())}
    assert {s.labels["state"]: s.value for s in families["workbench_drift_state"].samples}[state] == 1
    assert "workbench_drift_ratio" in families and "workbench_drift_coverage" in families


def test_the_reference_round_trips_and_a_malformed_one_is_refused(tmp_path, tiny_fleet):
    inputs = InputReference.fit(tiny_fleet, ("cpu_pct", "mem_pct"))
    reference = DriftReference(inputs, {"0-1h": {"cpu_pct": {"ratio": 0.5, "coverage": 0.8, "scores": 10}}})
    (tmp_path / DRIFT_FILE).write_text(json.dumps(reference.to_json()))
    again = read_drift_reference(tmp_path)
    assert again.accuracy == reference.accuracy and again.inputs.bounds == inputs.bounds
    assert read_drift_reference(tmp_path / "elsewhere") == DriftReference()  # none: empty, not an error
    (tmp_path / DRIFT_FILE).write_text(json.dumps({"inputs": {"bounds": 3}}))
    with pytest.raises(BundleError, match="drift.json"):
        read_drift_reference(tmp_path)


def test_the_daemon_reports_drift_with_its_rule(tmp_path, tiny_bundle_dir):
    bundle = load_bundle(tiny_bundle_dir, device="cpu")
    settings = InferenceSettings(bundle=tiny_bundle_dir, device="cpu", poll_seconds=0.02, forecast_worker="thread")
    with TestClient(create_app(settings, bundle=bundle)) as client:
        before = client.get("/drift/status").json()
        assert before["state"] == "warming_up" and "no_longer_fits" in before["rule"]
        need = bundle.spec.min_encoder_length
        feed(client, steps(need))
        wait_for(lambda: forecast_from(client, need - 1))
        doc = client.get("/drift/status").json()
        assert doc["state"] == "warming_up" and doc["inputs"]["checked"] is False  # the tiny bundle has no reference
        assert doc["accuracy_reference"] == "absolute limits"
        metrics = client.get("/metrics").text
        assert 'workbench_drift_state{state="warming_up"} 1' in metrics
        assert "/drift/status" in client.get("/openapi.json").json()["paths"]
