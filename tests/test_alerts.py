import dataclasses
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from workbench import contract as c
from workbench.alerts import Alert, AlertTracker, next_severity, predictive_alerts
from workbench.errors import ConfigError
from workbench.forecast import Forecast
from workbench.thresholds import Level, Thresholds

H = c.HORIZON_STEPS
TARGETS = ("cpu_pct", "mem_pct", "net_in_mb_s")
ORIGIN = 5_800_000  # a global step index (2025)
REST_KEYS = {"server", "metric", "severity", "predicted_value", "threshold", "minutes_ahead", "probability"}


def make_forecast(p90, *, profiles=None, origin=ORIGIN, warming_up=None, targets=TARGETS):
    """Forecast from ``{server: {metric: p90 path or constant}}``, band p90 - 20 .. p90; others at 30."""
    servers = list(p90)
    edge = np.full((len(servers), len(targets), H), 30.0)
    for i, server in enumerate(servers):
        for metric, path in p90[server].items():
            edge[i, targets.index(metric)] = path
    return Forecast(
        servers=servers,
        profiles=profiles or ["generic"] * len(servers),
        targets=targets,
        last_step=np.full(len(servers), origin),
        quantiles=np.stack([edge - 20, edge - 10, edge], axis=-1),
        current=edge[:, :, 0] - 10,
        warming_up=warming_up or {},
    )


def rising():
    """p90 crosses warning (80) at step 6 and critical (95) at step 30."""
    return np.interp(np.arange(1, H + 1), [0, 6, 30, 96], [70, 80.5, 95.5, 99])


def test_rising_band_gives_one_critical_alert_at_its_first_crossing():
    path = rising()
    assert path[4] < 80 <= path[5] and path[28] < 95 <= path[29]
    (alert,) = predictive_alerts(make_forecast({"ppgen01": {"cpu_pct": path}}), Thresholds())
    assert (alert.server, alert.metric, alert.severity, alert.status) == ("ppgen01", "cpu_pct", "critical", "firing")
    assert alert.minutes_ahead == 150 and alert.first_step == ORIGIN + 30
    assert alert.predicted_value == pytest.approx(95.5) and alert.threshold == 95.0
    # Largest over the horizon, at the last step: band (79, 89, 99), so 0.1 + 0.4 * (99 - 95) / 10.
    assert alert.probability == pytest.approx(0.26)
    data = json.loads(json.dumps(alert.to_dict()))
    assert REST_KEYS <= set(data)
    assert datetime.fromisoformat(data["expected_at"]) == datetime.fromtimestamp((ORIGIN + 30) * 300, UTC)


def test_warning_when_only_the_warning_level_is_reached():
    path = np.where(np.arange(1, H + 1) >= 6, 85.0, 70.0)
    (alert,) = predictive_alerts(make_forecast({"a": {"mem_pct": path}}), Thresholds())
    assert (alert.severity, alert.minutes_ahead, alert.threshold) == ("warning", 30, 85.0)
    assert alert.probability == pytest.approx(0.1)  # the level sits on the p90


def test_bands_below_the_levels_and_metrics_without_levels_never_alert():
    fc = make_forecast({"a": {"cpu_pct": 79.99, "mem_pct": 84.9, "net_in_mb_s": 9_000.0}})
    assert predictive_alerts(fc, Thresholds()) == []


def test_profile_levels_change_the_outcome():
    fc = make_forecast({"web": {"cpu_pct": 96.0}, "ml": {"cpu_pct": 96.0}}, profiles=["web_api", "ml_compute"])
    alerts = {a.server: a for a in predictive_alerts(fc, Thresholds())}
    assert alerts["web"].severity == "critical" and alerts["web"].threshold == 95.0
    assert alerts["ml"].severity == "warning" and alerts["ml"].threshold == 92.0  # ml_compute: 92 / 98
    strict = Thresholds(levels={"cpu_pct": Level(50.0, 60.0)}, profiles={})
    assert {a.severity for a in predictive_alerts(fc, strict)} == {"critical"}


def test_alerts_are_ordered_by_urgency():
    fc = make_forecast({"b": {"cpu_pct": 85.0}, "a": {"cpu_pct": rising()}, "c": {"mem_pct": 99.0}})
    got = [(a.server, a.severity) for a in predictive_alerts(fc, Thresholds())]
    assert got == [("c", "critical"), ("a", "critical"), ("b", "warning")]


def test_low_is_bad_metrics_alert_on_the_p10(monkeypatch):
    metric = dataclasses.replace(c.METRIC_BY_NAME["net_in_mb_s"], high_is_bad=False)
    monkeypatch.setitem(c.METRIC_BY_NAME, "net_in_mb_s", metric)
    th = Thresholds(levels={"net_in_mb_s": Level(warning=10.0, critical=5.0)}, profiles={})
    p10 = np.interp(np.arange(1, H + 1), [0, 12, 96], [20, 4, 4])  # falls below 5 at step 12
    fc = make_forecast({"a": {}})
    fc.quantiles[0, 2] = np.stack([p10, p10 + 10, p10 + 20], axis=-1)
    (alert,) = predictive_alerts(fc, th)
    assert (alert.severity, alert.threshold, alert.minutes_ahead) == ("critical", 5.0, 60)
    assert alert.predicted_value == pytest.approx(4.0)
    assert alert.probability == pytest.approx(0.1 + 0.4 * 1 / 10)  # P(X < 5) with band (4, 14, 24)


# --------------------------------------------------------------------------- tracker


def feed(tracker, edges, metric="cpu_pct", server="s1", th=None):
    """Run one update per constant p90 edge value; return the updates."""
    th = th or Thresholds()
    return [
        tracker.update(make_forecast({server: {metric: value}}, origin=ORIGIN + k), th) for k, value in enumerate(edges)
    ]


def test_edge_hovering_at_the_level_raises_once_and_does_not_flap():
    edges = [81.0, 79.0] * 5
    updates = feed(AlertTracker(), edges)
    assert sum(len(u.raised) for u in updates) == 1 and all(not u.cleared for u in updates)
    assert [u.active[0].status for u in updates[:4]] == ["firing", "holding", "firing", "holding"]
    assert {u.active[0].since_step for u in updates} == {ORIGIN}
    no_hysteresis = feed(AlertTracker(margin=0.0, clear_after=1), edges)
    assert sum(len(u.raised) for u in no_hysteresis) == 5 and sum(len(u.cleared) for u in no_hysteresis) == 5


def test_alert_clears_after_clear_after_updates_below_the_margin():
    tracker = AlertTracker(margin=0.05, clear_after=2)
    raised, first_below, second_below = feed(tracker, [85.0, 70.0, 70.0])
    assert len(raised.raised) == 1
    assert len(first_below.active) == 1 and first_below.active[0].status == "holding" and not first_below.cleared
    (recovery,) = second_below.cleared
    assert recovery.reason == "recovered" and recovery.alert.severity == "warning"
    assert second_below.active == [] and tracker.active == [] and not tracker._active
    assert recovery.to_dict()["status"] == "cleared"


def test_a_return_within_the_margin_resets_the_count():
    updates = feed(AlertTracker(clear_after=2), [85.0, 70.0, 77.0, 70.0, 70.0])  # 77 >= 80 - 4
    assert [len(u.active) for u in updates] == [1, 1, 1, 1, 0]


def test_escalation_is_immediate_and_deescalation_waits():
    updates = feed(AlertTracker(), [85.0, 96.0, 88.0, 88.0, 70.0, 70.0])
    raised, escalated, hold, lowered, _, cleared = updates
    assert raised.raised[0].severity == "warning"
    assert escalated.escalated[0].severity == "critical" and not escalated.raised
    assert escalated.escalated[0].since_step == ORIGIN  # still the same alert
    assert hold.active[0].severity == "critical" and hold.active[0].status == "holding"
    assert hold.active[0].predicted_value == 88.0 and not hold.deescalated
    assert lowered.deescalated[0].severity == "warning" and lowered.deescalated[0].status == "firing"
    assert cleared.cleared[0].reason == "recovered"


def test_critical_falling_far_clears_without_passing_through_warning():
    updates = feed(AlertTracker(), [97.0, 50.0, 50.0])
    assert updates[1].active[0].severity == "critical"
    assert not updates[2].deescalated and updates[2].cleared[0].alert.severity == "critical"


def test_servers_that_leave_the_forecast_clear_with_a_reason():
    th = Thresholds()
    tracker = AlertTracker()
    tracker.update(make_forecast({"a": {"cpu_pct": 90.0}, "b": {"cpu_pct": 90.0}, "c": {"mem_pct": 99.0}}), th)
    later = make_forecast({"c": {}}, warming_up={"a": 3}, targets=("cpu_pct",))
    later.missing = {"b": ["mem_pct"]}
    reasons = {(r.alert.server, r.reason) for r in tracker.update(later, th).cleared}
    assert reasons == {("a", "warming_up"), ("b", "missing_metrics"), ("c", "not_forecast")}
    tracker.update(make_forecast({"e": {"cpu_pct": 90.0}}), th)
    assert [r.reason for r in tracker.update(make_forecast({}), th).cleared] == ["not_forecast"]
    tracker.update(make_forecast({"d": {"mem_pct": 99.0}}), th)
    update = tracker.update(make_forecast({"d": {"mem_pct": 99.0}}), Thresholds(levels={}, profiles={}))
    assert [r.reason for r in update.cleared] == ["no_threshold"] and tracker.active == []


def test_first_update_raises_what_the_stateless_rule_finds():
    fc = make_forecast({"a": {"cpu_pct": rising()}, "b": {"mem_pct": 90.0}})
    update = AlertTracker().update(fc, Thresholds())
    assert update.raised == predictive_alerts(fc, Thresholds()) == update.active


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1, 0, 2, (True, True)), (2, 0)),  # escalate
        ((2, 0, 1, (True, True)), (2, 0)),  # hover within the critical margin
        ((2, 0, 1, (True, False)), (2, 1)),  # first update below
        ((2, 1, 1, (True, False)), (1, 0)),  # de-escalate
        ((2, 1, 0, (False, False)), (0, 0)),  # recover
    ],
)
def test_next_severity(args, expected):
    assert next_severity(*args, clear_after=2) == expected


@pytest.mark.parametrize("kwargs", [{"margin": 1.0}, {"margin": -0.1}, {"clear_after": 0}, {"clear_after": True}])
def test_bad_tracker_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        AlertTracker(**kwargs)


def test_alert_is_a_small_frozen_record():
    alert = Alert("s", "cpu_pct", "warning", 81.0, 80.0, 5, 0.1, "generic", ORIGIN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        alert.severity = "critical"  # type: ignore[misc]
    assert alert.first_step == ORIGIN + 1 and alert.to_dict()["since"] == alert.to_dict()["origin"]


def test_an_alert_whose_metric_is_already_past_its_level_says_so_instead_of_forecasting_the_crossing():
    path = np.full(H, 99.0)
    forecast = make_forecast({"a": {"cpu_pct": path}})
    (coming,) = predictive_alerts(forecast, Thresholds())
    assert coming.current == pytest.approx(89.0) and not coming.already_past  # the forecast's last value, below 95
    past = dataclasses.replace(coming, current=97.0)
    assert past.already_past and past.summary().startswith("cpu_pct already past 95 % (now 97)")
    assert past.to_dict()["already_past"] is True and past.to_dict()["current"] == 97.0
    below = dataclasses.replace(coming, current=60.0)
    assert not below.already_past and "in ~5 min" in below.summary()
    assert not dataclasses.replace(coming, current=None).already_past
