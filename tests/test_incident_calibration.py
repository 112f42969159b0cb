import json
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from workbench import contract as c
from workbench.early_warning import FEATURES, IncidentCalibration, WarningSet, fit_window, warning_features
from workbench.early_warning.calibrator import WINDOW_STEPS, Isotonic, Logistic, WindowModel
from workbench.errors import BundleError, ConfigError
from workbench.evaluation.probability import brier_skill, expected_calibration_error, reliability
from workbench.forecast import Forecast, history_baseline
from workbench.thresholds import Thresholds

H = c.HORIZON_STEPS
F = len(FEATURES)
METRICS = ("cpu_pct", "mem_pct")
WEIGHTS = {"current": 1.2, "p90_30m": 0.8, "p90_8h": 0.5, "rise_1h": -0.4, "slope_1h": 0.3, "z_30m": 0.4}
TRUE_W = np.array([WEIGHTS.get(name, 0.0) for name in FEATURES])


def constructed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, their known probabilities (a logistic truth, metric-specific bias) and drawn labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(METRICS), F))
    logit = x @ TRUE_W + np.array([-3.0, -2.0])
    p = 1.0 / (1.0 + np.exp(-logit))
    return x, p, (rng.random(p.shape) < p).astype(np.int8)


@pytest.fixture(scope="module")
def fitted():
    x, _, y = constructed(60_000, seed=1)
    return fit_window(x, METRICS, y, steps=6)


def test_calibrator_recovers_known_probabilities(fitted) -> None:
    x, p_true, y = constructed(40_000, seed=2)
    p = fitted.metric_probability(x, METRICS)
    assert np.abs(p - p_true).mean() < 0.02
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(p, p_true) < 0.02  # against the known probabilities themselves
    assert brier_skill(p, y) > 0.2


def test_probability_never_falls_as_the_risky_feature_grows(fitted) -> None:
    x = np.zeros((200, len(METRICS), F))
    x[:, :, 0] = np.linspace(-6, 6, 200)[:, None]  # the current value's distance, weight 1.2
    p = fitted.metric_probability(x, METRICS)
    assert (np.diff(p, axis=0) >= 0).all()
    assert p[0, 0] < 0.01 and p[-1, 0] > 0.9
    server = fitted.server_probability(p)
    assert (np.diff(server) >= 0).all() and (server >= p.max(axis=1) - 0.05).all()


def test_calibration_round_trips_through_json(fitted) -> None:
    calibration = IncidentCalibration(dict.fromkeys(WINDOW_STEPS, fitted), alert={"threshold": 0.4})
    text = json.dumps(calibration.to_json())
    back = IncidentCalibration.from_json(json.loads(text))
    x, _, _ = constructed(500, seed=3)
    for name in WINDOW_STEPS:
        assert np.allclose(back.windows[name].metric_probability(x, METRICS), fitted.metric_probability(x, METRICS))
    assert back.alert["threshold"] == 0.4
    assert "pickle" not in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(features=["current"]), "features"),
        (lambda d: d["windows"]["8h"]["metric_map"].update(y=[0.5, 0.2]), "malformed"),
        (lambda d: d["windows"]["30m"]["scores"].pop("*"), "malformed"),
        (lambda d: d["windows"].pop("30m"), "window"),
    ],
)
def test_a_broken_incidents_section_is_refused_with_its_reason(fitted, edit, message) -> None:
    data = IncidentCalibration(dict.fromkeys(WINDOW_STEPS, fitted)).to_json()
    edit(data)
    with pytest.raises(BundleError, match=message):
        IncidentCalibration.from_json(data)


def test_isotonic_map_is_monotone_and_bounded() -> None:
    rng = np.random.default_rng(0)
    score = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-2 * score))).astype(float)
    iso = Isotonic.fit(score, y)
    grid = np.linspace(-10, 10, 500)
    out = iso(grid)
    assert (np.diff(out) >= 0).all() and out.min() >= 0 and out.max() <= 1


def test_fit_refuses_a_fleet_without_incidents() -> None:
    x = np.zeros((100, 1, F))
    with pytest.raises(ConfigError, match="both"):
        fit_window(x, ("cpu_pct",), np.zeros((100, 1)), steps=6)


def ramp_forecast(cpu_p90: np.ndarray, cpu_now: float) -> Forecast:
    targets = ("cpu_pct", "net_in_mb_s")
    q = np.full((1, 2, H, 3), 10.0)
    q[0, 0, :, 2] = cpu_p90
    q[0, 0, :, 1] = cpu_p90 - 5
    q[0, 0, :, 0] = cpu_p90 - 10
    return Forecast(["s1"], ["generic"], targets, np.array([1000]), q, np.array([[cpu_now, 10.0]]))


def test_features_measure_distance_to_the_critical_level_by_window() -> None:
    # generic cpu: warning 80, critical 95 -> distance (x - 95) / 15
    p90 = np.full(H, 80.0)
    p90[10] = 95.0  # touches critical 55 min ahead: inside the 2-h window only
    feats = warning_features(ramp_forecast(p90, cpu_now=65.0), Thresholds())
    row = dict(zip(FEATURES, feats.values[0, 0], strict=True))
    assert row["current"] == pytest.approx(-2.0)
    assert row["p90_30m"] == pytest.approx(-1.0) and row["p90_2h"] == pytest.approx(0.0)
    assert row["p90_8h"] == pytest.approx(-1.0) and row["p50_2h"] == pytest.approx(-1 / 3)
    assert row["rise_1h"] == pytest.approx((75 - 65) / 15)
    assert row["slope_1h"] == 0 and row["change_30m"] == 0  # no history carried: no trend
    assert feats.alerting.tolist() == [[True, False]]  # net_in has no level
    assert np.isnan(feats.values[0, 1]).all()


def test_deviation_features_see_a_rise_that_is_small_against_the_levels() -> None:
    # generic cpu, warning 80 / critical 95: a quiet 20 % +- 1 server whose last hour climbs to 28 %
    rng = np.random.default_rng(0)
    history = 20 + rng.normal(0, 1, size=(1, 96, 2))
    history[0, -12:, 0] = np.linspace(21, 28, 12)
    history[0, :, 1] = 10.0
    lengths = np.array([96])
    base = history_baseline(history, lengths)
    assert base[0, 0, 0] == pytest.approx(20, abs=0.5) and base[0, 0, 1] == pytest.approx(1, abs=0.3)
    forecast = replace(ramp_forecast(np.full(H, 40.0), cpu_now=28.0), recent=history[:, -12:].copy(), baseline=base)
    row = dict(zip(FEATURES, warning_features(forecast, Thresholds()).values[0, 0], strict=True))
    assert row["current"] == pytest.approx((28 - 95) / 15)  # still far below warning by the levels' measure
    assert row["z_now"] > 6 and 3 < row["z_30m"] < row["z_now"]  # but 8 spreads above its own normal
    calm = replace(forecast, baseline=None)
    calm_row = dict(zip(FEATURES, warning_features(calm, Thresholds()).values[0, 0], strict=True))
    assert calm_row["z_now"] == 0 and calm_row["z_30m"] == 0  # no baseline: no claim of anything unusual


def test_history_baseline_ignores_the_last_hour_and_the_padding() -> None:
    values = np.zeros((2, 40, 1))
    values[0, :28, 0] = 5.0  # 40 steps of history: the first 28 form the baseline
    values[0, 28:, 0] = 100.0
    values[1, :10, 0] = 7.0  # 10 steps only: no history before the last hour
    base = history_baseline(values, np.array([40, 10]))
    assert base[0, 0].tolist() == [5.0, 0.0]
    assert np.isnan(base[1]).all()


def test_labels_mark_origins_whose_window_meets_the_critical_phase() -> None:
    origins = np.arange(100, 200)
    ws = WarningSet(("a", "b"), ("cpu_pct", "mem_pct"), origins, np.zeros((100, 2, 2, F)))
    at = lambda step: datetime.fromtimestamp(step * c.STEP_SECONDS, UTC)  # noqa: E731
    incidents = pl.DataFrame(
        {
            c.SERVER: ["a", "b"],
            "metric": ["cpu_pct", "mem_pct"],
            "onset": [at(150), None],
            "end": [at(160), at(170)],
        }
    )
    labels = ws.labels(incidents, window_steps=6)
    cpu_a = labels[:, 0, 0]
    assert origins[cpu_a == 1].tolist() == list(range(144, 159))  # onset within 6 steps .. last step before end
    assert labels[:, 1].sum() == 0 and labels[:, 0, 1].sum() == 0  # no onset: never an event


def test_reliability_table_bins_predictions() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 0, 1, 0])
    table = reliability(p, y)
    assert table["examples"].to_list() == [2, 2]
    assert table["observed"].to_list() == [0.0, 0.5]
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.05 + 0.5 * 0.45)


def test_risk_uses_the_calibration_and_says_so(fitted) -> None:
    from workbench.risk import risk

    p90 = np.full(H, 80.0)
    p90[3] = 99.0
    forecast = ramp_forecast(p90, cpu_now=85.0)
    plain = risk(forecast, Thresholds())
    assert not plain.calibrated and plain.environment()["probabilities"] == "uncalibrated"
    calibration = IncidentCalibration(dict.fromkeys(WINDOW_STEPS, fitted))
    report = risk(forecast, Thresholds(), incidents=calibration)
    assert report.calibrated and report.environment()["probabilities"] == "calibrated"
    features = warning_features(forecast, Thresholds()).values
    metric, server = calibration.predict(features, forecast.targets)
    assert np.allclose(report.metric_probabilities[..., :2], metric)
    assert np.allclose(report.probabilities[:, :2], server)
    assert report.risk_score[0] == pytest.approx(100 * max(server[0, 0], 0.8 * server[0, 1]))
    assert report.incident_probability_30m == pytest.approx(server[0, 0])


def test_history_features_read_the_last_hour() -> None:
    forecast = ramp_forecast(np.full(H, 80.0), cpu_now=71.0)
    recent = np.full((1, 12, 2), 10.0)
    recent[0, :, 0] = 60.0 + np.arange(12)  # cpu climbs 1 % a step: 12 % an hour, up to 71 now
    forecast.recent = recent
    row = dict(zip(FEATURES, warning_features(forecast, Thresholds()).values[0, 0], strict=True))
    assert row["slope_1h"] == pytest.approx(12 / 15) and row["change_30m"] == pytest.approx(6 / 15)


def test_each_metric_reads_the_whole_server(fitted) -> None:
    # An error storm shows in latency first: a metric's model sees every alerting metric's features.
    x, _, y = constructed(60_000, seed=5)
    y = y.copy()
    y[:, 1] = (np.random.default_rng(6).random(len(x)) < 1 / (1 + np.exp(-(2.0 * x[:, 0, 0] - 3)))).astype(np.int8)
    model = fit_window(x, METRICS, y, steps=6)
    assert model.context == METRICS
    probe = np.zeros((2, len(METRICS), F))
    probe[:, 0, 0] = [-2.0, 2.0]  # only the first metric moves
    p = model.metric_probability(probe, METRICS)
    assert p[1, 1] > 5 * p[0, 1]  # the second metric's probability follows the first one's features


def test_an_incident_within_30_min_is_one_within_8_h(fitted) -> None:
    f = len(FEATURES)
    flat = WindowModel(
        96, {"*": Logistic(np.zeros(f), np.ones(f), np.zeros(f), -3.0)}, fitted.metric_map, fitted.server_map
    )
    calibration = IncidentCalibration({"30m": fitted, "8h": flat})  # a sharp 30-min model, a flat 8-h one
    x, _, _ = constructed(2000, seed=7)
    metric, server = calibration.predict(x, METRICS)
    assert (metric[..., 1] >= metric[..., 0]).all() and (server[:, 1] >= server[:, 0]).all()
    assert (metric[..., 0] > fitted.metric_probability(x, METRICS) - 1e-12).all()  # the 30-min figure is untouched


def test_a_stale_incident_section_can_be_left_out_to_refit_it(tiny_bundle_dir, tmp_path, fitted) -> None:
    import shutil

    from workbench.model.bundle import load_bundle, save_calibration

    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, folder)
    bundle = load_bundle(folder, device="cpu")
    assert bundle.incidents is None  # a bundle without the section says so
    bundle.incidents = IncidentCalibration(dict.fromkeys(WINDOW_STEPS, fitted))
    save_calibration(bundle, folder)
    assert load_bundle(folder, device="cpu").incidents is not None
    assert load_bundle(folder, device="cpu", incidents=False).incidents is None
    data = json.loads((folder / "calibration.json").read_text())
    data["incidents"]["features"] = ["current"]
    (folder / "calibration.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="features"):
        load_bundle(folder, device="cpu")
    assert load_bundle(folder, device="cpu", incidents=False).incidents is None


def test_the_alert_threshold_must_hold_its_precision_above_it() -> None:
    from workbench.early_warning.fit import pick_threshold

    curve = pl.DataFrame({"threshold": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "precision": [0.5, 0.72, 0.65, 0.71, 0.8, None]})
    assert pick_threshold(curve, 0.7)[0] == 0.5  # 0.3 reaches 0.7 alone, then 0.4 falls below
    tau, how = pick_threshold(curve, 0.9)
    assert tau == 0.6 and "no threshold" in how  # none holds 0.9: the most precise one, said so


def test_a_benchmark_target_without_its_figure_fails() -> None:
    from workbench.evaluation.warning_benchmark import _check

    assert _check("recall", None, 0.8) == ("recall", None, False)
    assert _check("recall", float("nan"), 0.8)[2] is False
    assert _check("recall", 0.81, 0.8)[2] and not _check("recall", 0.79, 0.8)[2]
    assert _check("ece", 0.04, 0.05, below=True)[2] and not _check("ece", 0.06, 0.05, below=True)[2]
    assert _check("gap", -0.04, 0.0, within=0.05)[2] and not _check("gap", 0.07, 0.0, within=0.05)[2]


def test_healthy_fleet_probability_grows_with_the_fleet(fitted) -> None:
    record = {"healthy_server_rate": {"30m": 0.002, "8h": 0.04}}
    calibration = IncidentCalibration(dict.fromkeys(WINDOW_STEPS, fitted), record=record)
    one, twelve = calibration.healthy_fleet_probability(1), calibration.healthy_fleet_probability(12)
    assert one == pytest.approx({"30m": 0.002, "8h": 0.04})
    assert twelve["8h"] == pytest.approx(1 - 0.96**12) and twelve["30m"] == pytest.approx(1 - 0.998**12)
    assert IncidentCalibration(dict.fromkeys(WINDOW_STEPS, fitted)).healthy_fleet_probability(12) is None
    back = IncidentCalibration.from_json(json.loads(json.dumps(calibration.to_json())))
    assert back.healthy_fleet_probability(12) == pytest.approx(twelve)
