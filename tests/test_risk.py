import json
import math

import numpy as np
import pytest

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.forecast import Forecast, postprocess
from workbench.risk import (
    HIGH_RISK_SCORE,
    WINDOW_8H_STEPS,
    WINDOW_30M_STEPS,
    exceedance_probability,
    fleet_health,
    risk,
)
from workbench.thresholds import Thresholds

H = c.HORIZON_STEPS
TARGETS = ("cpu_pct", "mem_pct", "net_in_mb_s")
BAND = np.array([10.0, 20.0, 30.0])


def make_forecast(p50, *, profiles=None, half_width=5.0, warming_up=None):
    """Forecast from ``{server: {metric: p50 path or constant}}``; other targets sit at 20."""
    servers = list(p50)
    mid = np.full((len(servers), len(TARGETS), H), 20.0)
    for i, server in enumerate(servers):
        for metric, path in p50[server].items():
            mid[i, TARGETS.index(metric)] = path
    raw = np.stack([mid - half_width, mid, mid + half_width], axis=-1)
    return Forecast(
        servers=servers,
        profiles=profiles or ["generic"] * len(servers),
        targets=TARGETS,
        last_step=np.full(len(servers), 6_000_000),
        quantiles=postprocess(raw, TARGETS),
        current=mid[:, :, 0],
        warming_up=warming_up or {},
    )


# --------------------------------------------------------------------------- exceedance


@pytest.mark.parametrize("tails", ["exponential", "linear"])
def test_exceedance_interpolates_between_the_quantiles(tails):
    thresholds = np.array([10.0, 15.0, 20.0, 25.0, 30.0])
    p = exceedance_probability(BAND, thresholds, tails=tails)
    np.testing.assert_allclose(p, [0.9, 0.7, 0.5, 0.3, 0.1], atol=1e-12)


def test_exponential_tails_keep_the_segment_density():
    # Upper tail: 0.1 * exp(-4 d / (p90 - p50)); lower tail mirrors it.
    p = exceedance_probability(BAND, np.array([32.5, 7.5, 30 + 10 * math.log(2) / 4]))
    np.testing.assert_allclose(p, [0.1 * math.exp(-1), 1 - 0.1 * math.exp(-1), 0.05], atol=1e-12)
    assert 0 < exceedance_probability(BAND, 60.0) < 1e-6


def test_linear_tails_reach_zero_and_one():
    p = exceedance_probability(BAND, np.array([31.25, 32.5, 40.0, 8.75, 7.5, -5.0]), tails="linear")
    np.testing.assert_allclose(p, [0.05, 0.0, 0.0, 0.95, 1.0, 1.0], atol=1e-12)


def test_degenerate_bands_are_point_masses():
    point = np.array([5.0, 5.0, 5.0])
    np.testing.assert_array_equal(exceedance_probability(point, np.array([4.9, 5.0, 5.1])), [1, 0, 0])
    below = exceedance_probability(point, np.array([4.9, 5.0, 5.1]), high_is_bad=False)
    np.testing.assert_array_equal(below, [0, 0, 1])
    low_tie = np.array([10.0, 10.0, 30.0])  # half the mass sits at 10
    np.testing.assert_allclose(exceedance_probability(low_tie, np.array([9.99, 10.0, 20.0])), [1, 0.5, 0.3])
    high_tie = np.array([20.0, 30.0, 30.0])
    np.testing.assert_allclose(exceedance_probability(high_tie, np.array([25.0, 29.99, 30.0])), [0.7, 0.5004, 0])


def test_low_is_bad_is_the_mirror_image():
    np.testing.assert_allclose(
        exceedance_probability(BAND, np.array([10.0, 20.0, 30.0]), high_is_bad=False), [0.1, 0.5, 0.9]
    )
    rng = np.random.default_rng(1)
    q = np.sort(rng.uniform(0, 100, (500, 3)), axis=-1)
    t = rng.uniform(-20, 120, 500)
    np.testing.assert_allclose(
        exceedance_probability(q, t) + exceedance_probability(q, t, high_is_bad=False), 1.0, atol=1e-12
    )
    mixed = exceedance_probability(q[:2], t[:2], high_is_bad=np.array([True, False]))
    np.testing.assert_allclose(mixed, [exceedance_probability(q[0], t[0]), 1 - exceedance_probability(q[1], t[1])])


def test_exceedance_broadcasts_over_leading_axes():
    rng = np.random.default_rng(2)
    q = np.sort(rng.uniform(0, 100, (4, 3, 7, 3)), axis=-1)
    t = rng.uniform(0, 100, (4, 3, 1))
    p = exceedance_probability(q, t)
    assert p.shape == (4, 3, 7)
    for index in [(0, 0, 0), (3, 2, 6), (1, 2, 3)]:
        assert p[index] == exceedance_probability(q[index], t[index[:2]][0])


@pytest.mark.parametrize("tails", ["exponential", "linear"])
def test_exceedance_is_monotone_in_the_threshold(tails):
    rng = np.random.default_rng(3)
    q = np.sort(np.round(rng.uniform(0, 100, (300, 3)) / 10) * 10, axis=-1)  # many ties
    grid = np.linspace(-50, 150, 4001)
    p = exceedance_probability(q[:, None, :], grid[None, :], tails=tails)
    assert ((p >= 0) & (p <= 1)).all()
    assert (np.diff(p, axis=1) <= 0).all()
    below = exceedance_probability(q[:, None, :], grid[None, :], high_is_bad=False, tails=tails)
    assert (np.diff(below, axis=1) >= 0).all()


@pytest.mark.parametrize(("levels", "tails"), [((0.5, 0.1, 0.9), "linear"), ((0.1, 0.5), "linear"), (None, "normal")])
def test_bad_settings_name_what_is_allowed(levels, tails):
    with pytest.raises(ConfigError, match="levels|tails"):
        exceedance_probability(BAND, 20.0, levels or (0.1, 0.5, 0.9), tails=tails)


# --------------------------------------------------------------------------- risk


def random_forecast(seed=4, n=40):
    rng = np.random.default_rng(seed)
    mid = rng.uniform(30, 90, (n, len(TARGETS), 1)) + np.cumsum(rng.normal(0, 1.5, (n, len(TARGETS), H)), axis=2)
    half = rng.uniform(0.5, 8, (n, len(TARGETS), H))
    raw = np.stack([mid - half, mid, mid + half], axis=-1)
    return Forecast(
        servers=[f"s{i}" for i in range(n)],
        profiles=[("generic", "ml_compute", "database")[i % 3] for i in range(n)],
        targets=TARGETS,
        last_step=np.arange(n),
        quantiles=postprocess(raw, TARGETS),
        current=mid[:, :, 0],
    )


def test_window_probabilities_match_brute_force_and_grow_with_window_and_level():
    fc, th = random_forecast(), Thresholds()
    report = risk(fc, th)
    for i, profile in enumerate(fc.profiles):
        for j, metric in enumerate(fc.targets):
            level = th.level(metric, profile)
            if level is None:
                assert (report.metric_probabilities[i, j] == 0).all()
                continue
            expected = [
                exceedance_probability(fc.quantiles[i, j, :steps], value).max()
                for value, steps in [
                    (level.critical, WINDOW_30M_STEPS),
                    (level.critical, WINDOW_8H_STEPS),
                    (level.warning, WINDOW_30M_STEPS),
                    (level.warning, WINDOW_8H_STEPS),
                ]
            ]
            np.testing.assert_allclose(report.metric_probabilities[i, j], expected, rtol=0, atol=1e-12)
    assert (report.p_critical_8h >= report.p_critical_30m).all()
    assert (report.p_warning_30m >= report.p_critical_30m).all()
    assert (report.p_warning_8h >= report.p_warning_30m).all()
    assert ((report.risk_score >= 0) & (report.risk_score <= 100)).all()


def test_max_over_a_window_never_decreases_with_its_length():
    fc = random_forecast(seed=5)
    p = exceedance_probability(fc.quantiles, 85.0)
    by_length = np.stack([p[..., :w].max(axis=-1) for w in range(1, H + 1)], axis=-1)
    assert (np.diff(by_length, axis=-1) >= 0).all()


def test_small_fleet_scores_figures_and_json():
    rising = np.linspace(20, 99, H)
    fc = make_forecast(
        {
            "calm": {"cpu_pct": 20.0},
            "at_critical": {"cpu_pct": 95.0},  # p50 on the critical level from step 1
            "late": {"cpu_pct": rising},  # critical only after several hours
            "hot": {"cpu_pct": 99.0, "mem_pct": 50.0},
        },
        warming_up={"new1": 3, "new2": 10},
    )
    report = risk(fc, Thresholds())
    calm, at_critical, late, hot = report.risk_score
    assert at_critical == pytest.approx(50.0, abs=1e-3)  # p_crit_30m = 0.5 exactly
    assert report.p_critical_30m[1] == pytest.approx(0.5)
    assert hot == pytest.approx(82.0)  # P(X > 95) with band (94, 99, 100): 0.5 + 0.4 * 0.8
    # Critical for sure within 8 h (0.8 x 0.82) outranks a coin flip within 30 min (1 x 0.5).
    assert late == pytest.approx(0.8 * 82.0) and report.p_critical_30m[2] < 1e-6
    assert 0 < calm < 1e-6 and hot > late > at_critical > calm
    assert report.driver == ("cpu_pct",) * 4
    assert report.high_risk_servers == 1 and HIGH_RISK_SCORE == 70
    assert report.total_servers == 6 and report.warming_up == ("new1", "new2")
    p30, p8 = report.p_critical_30m, report.p_critical_8h
    assert report.incident_probability_30m == pytest.approx(1 - np.prod(1 - p30))
    assert report.incident_probability_8h == pytest.approx(1 - np.prod(1 - p8))
    assert report.expected_incidents_8h == pytest.approx(p8.sum()) and report.expected_incidents_8h > 1
    assert report.fleet_health == "critical"  # one high-risk server of four
    data = json.loads(json.dumps(report.to_json()))
    env = data["environment"]
    assert {"incident_probability_30m", "incident_probability_8h", "high_risk_servers", "total_servers"} <= set(env)
    assert env["fleet_health"] == "critical" and env["warming_up_servers"] == 2 and env["total_servers"] == 6
    assert data["servers"]["hot"]["risk_score"] == 82.0 and data["servers"]["new1"]["risk_score"] is None


def test_metrics_combine_as_independent_events():
    fc = make_forecast({"two": {"cpu_pct": 95.0, "mem_pct": 95.0}, "one": {"cpu_pct": 95.0}})
    report = risk(fc, Thresholds())
    assert report.p_critical_30m[0] == pytest.approx(0.75)  # 1 - 0.5 * 0.5
    assert report.p_critical_30m[1] == pytest.approx(0.5)
    assert report.risk_score[0] == pytest.approx(75.0)


def test_profile_levels_change_the_risk():
    fc = make_forecast({"web": {"cpu_pct": 95.0}, "ml": {"cpu_pct": 95.0}}, profiles=["web_api", "ml_compute"])
    report = risk(fc, Thresholds())
    assert report.p_critical_30m[0] == pytest.approx(0.5)
    assert report.p_critical_30m[1] == pytest.approx(0.26)  # ml_compute critical is 98: 0.5 - 0.4 * 3 / 5


def test_metrics_without_levels_and_empty_fleets_score_zero():
    only_net = Thresholds(levels={}, profiles={})
    report = risk(make_forecast({"a": {"net_in_mb_s": 5000.0}}), only_net)
    assert report.risk_score.tolist() == [0.0] and report.driver == (None,)
    fc = make_forecast({}, warming_up={"w": 1})
    fc.missing = {"m": ["cpu_pct"]}
    empty = risk(fc, Thresholds())
    assert empty.total_servers == 2 and empty.high_risk_servers == 0
    assert empty.to_json()["servers"]["m"] == {"risk_score": None, "driver": None, "source": "missing_metrics"}
    assert empty.incident_probability_30m == 0.0 and empty.fleet_health == "unknown"
    assert empty.to_json()["environment"]["max_risk_score"] == 0.0


@pytest.mark.parametrize(
    ("scores", "health"),
    [
        ([], "unknown"),
        ([0.0] * 100, "healthy"),
        ([75.0] + [0.0] * 99, "healthy"),  # 1 % high-risk
        ([75.0] * 2 + [0.0] * 98, "degraded"),  # 2 % high-risk
        ([45.0] * 10 + [0.0] * 90, "degraded"),  # 10 % elevated
        ([75.0] * 10 + [0.0] * 90, "critical"),  # 10 % high-risk
    ],
)
def test_fleet_health_rule(scores, health):
    assert fleet_health(np.array(scores)) == health
