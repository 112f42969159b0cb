import numpy as np
import pytest

from workbench import contract as c
from workbench.alert_rules import (
    BandEdgeRule,
    CalibratedRule,
    PredictLinearRule,
    StaticRule,
    make_rule,
    resolve_rule,
)
from workbench.alerts import AlertTracker, predictive_alerts
from workbench.early_warning import IncidentCalibration
from workbench.early_warning.calibrator import WINDOW_STEPS, Isotonic, Logistic, WindowModel
from workbench.early_warning.features import FEATURES
from workbench.errors import ConfigError
from workbench.forecast import RECENT_STEPS, Forecast
from workbench.thresholds import Thresholds

H = c.HORIZON_STEPS
TARGETS = ("cpu_pct", "net_in_mb_s")
ORIGIN = 5_800_000


def forecast(current: float, *, p90: float | np.ndarray = 60.0, recent: np.ndarray | None = None) -> Forecast:
    """One generic server: cpu at ``current`` now, band p90 - 20 .. p90; net_in (no level) at 10."""
    edge = np.broadcast_to(np.asarray(p90, dtype=float), (H,))
    q = np.full((1, 2, H, 3), 10.0)
    q[0, 0] = np.stack([edge - 20, edge - 10, edge], axis=-1)
    hist = np.full((1, RECENT_STEPS, 2), 10.0)
    hist[0, :, 0] = current if recent is None else recent
    return Forecast(["s1"], ["generic"], TARGETS, np.array([ORIGIN]), q, np.array([[current, 10.0]]), recent=hist)


def run(rule, forecasts):
    tracker = AlertTracker(rule, margin=0.05, clear_after=2)
    return [tracker.update(fc, Thresholds()) for fc in forecasts]


def test_static_rule_fires_at_the_level_holds_once_and_recovers() -> None:
    updates = run(StaticRule(), [forecast(85.0), forecast(70.0), forecast(70.0)])
    (alert,) = updates[0].raised
    assert (alert.severity, alert.threshold, alert.minutes_ahead, alert.probability) == ("warning", 80.0, 0, None)
    assert alert.rule == "static" and "past its warning level 80 %" in alert.summary()
    assert [a.status for a in updates[1].active] == ["holding"]  # first update below: held
    assert updates[2].active == [] and updates[2].cleared[0].reason == "recovered"
    (crit,) = predictive_alerts(forecast(96.0), Thresholds(), StaticRule())
    assert crit.severity == "critical"


def test_predict_linear_rule_follows_the_last_hour_line() -> None:
    rising = 50.0 + 2.0 * np.arange(RECENT_STEPS)  # 2 % per step, at 72 now: 95 is reached at step 12
    (alert,) = predictive_alerts(forecast(72.0, recent=rising), Thresholds(), PredictLinearRule())
    assert (alert.severity, alert.threshold, alert.minutes_ahead) == ("critical", 95.0, 60)
    assert alert.predicted_value == pytest.approx(96.0) and alert.probability is None
    assert "on course to pass 95 % in ~1 h" in alert.summary()
    flat = forecast(50.0)
    updates = run(PredictLinearRule(), [forecast(72.0, recent=rising), flat, flat])
    assert updates[0].raised and updates[1].active and not updates[2].active
    short = rising.copy()
    short[:3] = np.nan  # less than an hour of history: no line, no alert
    assert predictive_alerts(forecast(72.0, recent=short), Thresholds(), PredictLinearRule()) == []


def test_band_edge_rule_is_the_default() -> None:
    (alert,) = predictive_alerts(forecast(60.0, p90=97.0), Thresholds())
    assert (alert.rule, alert.severity, alert.minutes_ahead) == ("band_edge", "critical", 5)
    assert predictive_alerts(forecast(60.0, p90=97.0), Thresholds(), BandEdgeRule()) == [alert]


def calibration(threshold: float = 0.5) -> IncidentCalibration:
    """P = sigmoid(10 * current distance + 2): 0.5 at 92 % cpu, 0.34 at 91 %, 0.66 at 93 %."""
    f = len(FEATURES)
    score = Logistic(np.zeros(f), np.ones(f), np.eye(f)[0] * 10.0, 2.0)
    knots = np.linspace(-30, 30, 601)
    identity = Isotonic(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    window = WindowModel(6, {"*": score}, Isotonic(knots, 1 / (1 + np.exp(-knots))), identity)
    return IncidentCalibration(dict.fromkeys(WINDOW_STEPS, window), alert={"window": "8h", "threshold": threshold})


def test_calibrated_rule_fires_on_probability_and_speaks_of_the_critical_level() -> None:
    rule = CalibratedRule(calibration())
    p93 = 1 / (1 + np.exp(-(10 * (93 - 95) / 15 + 2)))
    (alert,) = predictive_alerts(forecast(93.0, p90=96.0), Thresholds(), rule)
    assert (alert.rule, alert.severity, alert.threshold) == ("calibrated", "critical", 95.0)
    assert alert.probability == pytest.approx(p93, abs=2e-3) and alert.minutes_ahead == 5
    assert alert.summary() == f"cpu_pct likely to pass 95 % in ~5 min (p = {alert.probability:.2f})"
    (watch,) = predictive_alerts(forecast(91.0), Thresholds(), rule)  # p = 0.34: at least half of 0.5
    assert watch.severity == "warning" and watch.threshold == 95.0
    assert predictive_alerts(forecast(80.0), Thresholds(), rule) == []
    updates = run(rule, [forecast(93.0), forecast(80.0), forecast(80.0)])
    assert updates[0].raised and updates[1].active and updates[2].cleared[0].reason == "recovered"


def test_every_rule_scans_a_forecast_of_no_server() -> None:
    # every server warming up: a forecast with no rows, which the daemon scans like any other
    empty = Forecast([], [], TARGETS, np.zeros(0, np.int64), np.zeros((0, 2, H, 3)), np.zeros((0, 2)),
                     warming_up={"s1": 3}, recent=np.zeros((0, RECENT_STEPS, 2)))  # fmt: skip
    for rule in (CalibratedRule(calibration()), BandEdgeRule(), PredictLinearRule(), StaticRule()):
        assert predictive_alerts(empty, Thresholds(), rule) == [], rule.name
        assert run(rule, [empty, empty])[-1].active == []


def test_rules_are_named_and_checked() -> None:
    assert resolve_rule("auto", None) == "band_edge"
    assert resolve_rule("auto", calibration()) == "calibrated"
    assert make_rule("static", None).name == "static"
    with pytest.raises(ConfigError, match="incident calibration"):
        make_rule("calibrated", None)
    with pytest.raises(ConfigError, match="allowed"):
        make_rule("psychic", None)
    with pytest.raises(ConfigError, match="threshold"):
        CalibratedRule(calibration(threshold=0.0))
