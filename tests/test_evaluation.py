"""Evaluation: metric functions by hand, early-warning scoring on constructed tables, tiny backtests."""

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.evaluation import (
    BacktestConfig,
    ScoreBoard,
    Window,
    backtest,
    covered,
    early_warning,
    episodes,
    mean_pinball,
    pinball_loss,
    recommend_min_encoder_length,
    seasonal_scale,
    study_lengths,
    warmup_curve,
)
from workbench.simulator import GROUND_TRUTH_SCHEMA

STEP_US = c.STEP_SECONDS * 1_000_000


# --------------------------------------------------------------------------- metrics


def test_pinball_loss_by_hand():
    assert pinball_loss(np.array(10.0), 8.0, 0.9) == pytest.approx(1.8)  # under-forecast: 0.9 * 2
    assert pinball_loss(np.array(10.0), 12.0, 0.9) == pytest.approx(0.2)  # over-forecast: 0.1 * 2
    assert pinball_loss(np.array(10.0), 12.0, 0.1) == pytest.approx(1.8)
    assert pinball_loss(np.array(10.0), 10.0, 0.5) == 0.0
    q = np.array([8.0, 10.0, 12.0])
    assert mean_pinball(np.array(11.0), q) == pytest.approx((0.1 * 3 + 0.5 * 1 + 0.1 * 1) / 3)


def test_coverage_and_seasonal_scale_by_hand():
    q = np.array([[1.0, 2.0, 3.0]] * 4)
    np.testing.assert_array_equal(covered(np.array([0.5, 1.0, 3.0, 3.5]), q), [0, 1, 1, 0])
    assert np.isnan(covered(np.array([np.nan]), q[:1]))[0]
    history = np.zeros((1, 290, 1))
    history[0, 288:, 0] = [2.0, -4.0]  # differences a day apart: 2 and 4
    assert seasonal_scale(history)[0, 0] == pytest.approx(3.0)
    assert np.isnan(seasonal_scale(np.ones((1, 300, 1)))[0, 0])  # zero scale is left out
    assert np.isnan(seasonal_scale(np.ones((1, 100, 1)))[0, 0])  # no full season


def test_scoreboard_averages_by_hand():
    board = ScoreBoard(("cpu_pct", "mem_pct"), 2)
    actual = np.array([[[10.0, 10.0], [5.0, 5.0]]])  # (1 server, 2 metrics, 2 steps)
    q = np.zeros((1, 2, 2, 3))
    q[0, 0] = [[9, 10, 11], [11, 12, 14]]  # cpu: exact then 2 too high (outside the band)
    q[0, 1] = [[4, 5, 6], [4, 5, 6]]  # mem: exact
    board.add("m", actual, q, np.array([[2.0, 1.0]]))
    frame = board.frame().sort("metric", "horizon_step")
    assert frame["mase"].to_list() == [0.0, 1.0, 0.0, 0.0]
    assert frame["coverage"].to_list() == [1.0, 0.0, 1.0, 1.0]
    assert frame["pinball"][1] == pytest.approx((0.9 * 1 + 0.5 * 2 + 0.1 * 4) / 3)
    overall = board.summary().row(0, named=True)
    assert overall["mase"] == pytest.approx(0.25) and overall["coverage"] == pytest.approx(0.75)
    assert board.summary("horizon_step")["mase"].to_list() == [0.0, 0.5]
    with pytest.raises(ValueError, match="model, metric, horizon_step"):
        board.summary("server")


# --------------------------------------------------------------------------- early warning

T0 = 5_000_000  # a global step index


def incidents(*rows: tuple[str, str, int]) -> pl.DataFrame:
    """Ground truth from ``(server, metric, onset_step)``; precursor 2 h before, recovered 1 h after."""
    data = {k: [] for k in GROUND_TRUTH_SCHEMA}
    for i, (server, metric, onset) in enumerate(rows):
        steps = {"precursor_start": onset - 24, "onset": onset, "peak": onset + 3, "end": onset + 6}
        steps["recovered"] = onset + 12
        values = {"incident_id": i, c.SERVER: server, c.PROFILE: "web_api", "incident_type": "x", "metric": metric}
        values |= {"threshold": 95.0, "intensity": 1.0, "scenario": "critical"}
        for key in GROUND_TRUTH_SCHEMA:
            data[key].append(steps[key] * STEP_US if key in steps else values[key])
    frame = pl.DataFrame(data)
    times = [k for k in steps]
    return frame.with_columns(pl.col(times).cast(pl.Datetime("us", "UTC"))).cast(GROUND_TRUTH_SCHEMA)


def alarms(*rows: tuple[str, str, str, int]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["rule", c.SERVER, "metric", "step"], orient="row")


def test_early_warning_hits_late_warnings_false_alarms_and_episodes():
    truth = incidents(("a", "mem_pct", T0 + 100), ("b", "cpu_pct", T0 + 100), ("c", "disk_pct", T0 + 100))
    table = alarms(
        # a: alarm 60 min ahead that lasts into the incident: one episode of 5 alarms, a hit
        *[("r", "a", "mem_pct", T0 + s) for s in range(88, 93)],
        # b: alarm only 20 min ahead: too late
        ("r", "b", "cpu_pct", T0 + 96),
        # c: nothing on disk; a cpu alarm on c far from any cpu incident: a false alarm
        ("r", "c", "cpu_pct", T0 + 10),
        ("r", "c", "cpu_pct", T0 + 11),
        # network throughput is no incident's primary metric: unscored
        ("r", "a", "net_in_mb_s", T0 + 50),
    )
    window = Window(("a", "b", "c"), T0, T0 + 287, 1)
    result = early_warning(table, truth, window)
    row = result.rule("r")
    assert (row["incidents"], row["hit"], row["late"], row["missed"]) == (3, 1, 1, 1)
    assert row["recall"] == pytest.approx(1 / 3)
    assert (row["true_episodes"], row["false_alarms"], row["unscored_episodes"]) == (2, 1, 1)
    assert row["precision"] == pytest.approx(2 / 3)
    assert row["f1"] == pytest.approx(2 * (1 / 3) * (2 / 3) / (1 / 3 + 2 / 3))
    assert row["median_lead_minutes"] == 60.0
    assert row["false_alarms_per_server_day"] == pytest.approx(1 / 3)  # 3 servers x 1 day
    leads = dict(result.incidents.select(c.SERVER, "lead_minutes").iter_rows())
    assert leads == {"a": 60.0, "b": None, "c": None}


def test_lead_time_is_capped_at_the_horizon_and_incidents_outside_the_window_are_not_scored():
    truth = incidents(("a", "mem_pct", T0 + 200), ("a", "mem_pct", T0 + 3))  # the second: too early to warn
    table = alarms(*[("r", "a", "mem_pct", T0 + s) for s in range(0, 200)])
    row = early_warning(table, truth, Window(("a",), T0, T0 + 287, 1, max_lead_steps=96)).rule("r")
    assert row["incidents"] == 1 and row["median_lead_minutes"] == 96 * 5
    assert row["episodes"] == 1 and row["true_episodes"] == 1


def test_a_rule_without_alarms_scores_zero_and_episodes_merge_within_the_stride():
    truth = incidents(("a", "mem_pct", T0 + 100))
    row = early_warning(alarms(), truth, Window(("a",), T0, T0 + 287, 1), rules=["quiet"]).rule("quiet")
    assert row["recall"] == 0.0 and row["precision"] is None and row["f1"] == 0.0
    rows = alarms(*[("r", "a", "cpu_pct", T0 + s) for s in (0, 3, 6, 12)])
    assert episodes(rows, merge_steps=3)["alarms"].to_list() == [3, 1]
    assert episodes(rows, merge_steps=6).height == 1
    with pytest.raises(ConfigError):
        Window(("a",), T0, T0 - 1)


# --------------------------------------------------------------------------- backtest


@pytest.fixture(scope="module")
def tiny_bundle(tiny_bundle_dir):
    from workbench.model import load_bundle

    return load_bundle(tiny_bundle_dir)


def test_tiny_backtest_scores_every_model_on_the_same_values(tiny_bundle, tiny_fleet):
    servers = sorted(tiny_fleet[c.SERVER].unique().to_list())[:4]
    end = tiny_fleet[c.TIMESTAMP].max()
    start = end - timedelta(hours=9)
    config = BacktestConfig(origin_stride=12, warning_stride=6, history_steps=300, progress=False)
    result = backtest(tiny_bundle, tiny_fleet, test_servers=servers, test_start=start, config=config)
    summary = result.summary()
    assert summary["model"].to_list() == ["tft", "seasonal_naive", "last_value", "predict_linear"]
    assert summary["n"].n_unique() == 1 and summary["n"][0] == len(result.origins) * 4 * 8 * 96
    assert ((summary["coverage"] >= 0) & (summary["coverage"] <= 1)).all()
    assert result.mase_ratio() is not None and result.mase_ratio() > 0
    scores = result.scores
    assert set(scores.columns) >= {"model", "metric", "horizon_step", "pinball", "mase", "coverage"}
    assert scores["horizon_step"].max() == 96
    assert {fc.source for fc in result.examples.values()} == {"tft", "seasonal_naive", "last_value", "predict_linear"}
    assert all((fc.last_step == result.example_origin).all() for fc in result.examples.values())
    assert result.rules == ("band_edge", "predict_linear", "static")  # no incident calibration: no calibrated rule
    assert set(result.alarms["rule"].unique().to_list()) <= set(result.rules)
    ew = result.early_warning(pl.DataFrame(schema=GROUND_TRUTH_SCHEMA))
    assert ew.summary["rule"].to_list() == ["band_edge", "predict_linear", "static"]


def test_backtest_never_reads_the_future(tiny_bundle, tiny_fleet):
    servers = sorted(tiny_fleet[c.SERVER].unique().to_list())[:2]
    end = tiny_fleet[c.TIMESTAMP].max()
    start = end - timedelta(hours=8, minutes=30)
    config = BacktestConfig(origin_stride=6, warning_stride=0, history_steps=300, progress=False)
    run = backtest(tiny_bundle, tiny_fleet, test_servers=servers, test_start=start, config=config, example_step=0)
    changed = tiny_fleet.with_columns(
        pl.when(pl.col(c.TIMESTAMP) >= start).then(pl.col(m) * 0.5).otherwise(pl.col(m)).alias(m)
        for m in c.METRIC_NAMES
    )
    again = backtest(tiny_bundle, changed, test_servers=servers, test_start=start, config=config, example_step=0)
    assert run.example_origin == again.example_origin == run.origins[0]
    for model, fc in run.examples.items():
        np.testing.assert_allclose(fc.quantiles, again.examples[model].quantiles, err_msg=model)
    assert run.summary()["mase"].to_list() != again.summary()["mase"].to_list()  # the actuals did change


def test_backtest_refuses_unknown_servers_and_settings(tiny_bundle, tiny_fleet):
    start = tiny_fleet[c.TIMESTAMP].max() - timedelta(hours=9)
    with pytest.raises(ConfigError, match="not in the data"):
        backtest(tiny_bundle, tiny_fleet, test_servers=["nope"], test_start=start)
    with pytest.raises(ConfigError, match="allowed: seasonal_naive"):
        BacktestConfig(baselines=("arima",))


def test_warmup_curve_and_recommendation(tiny_bundle, tiny_fleet):
    assert study_lengths(tiny_bundle, (6, 12, 100, 288)) == [6, 12, 48]
    servers = sorted(tiny_fleet[c.SERVER].unique().to_list())[:3]
    last = int(tiny_fleet[c.TIMESTAMP].max().timestamp()) // c.STEP_SECONDS
    origins = [last - 96 - 30, last - 96]
    curve = warmup_curve(tiny_bundle, tiny_fleet, servers=servers, origins=origins, lengths=(6, 24), progress=False)
    assert curve["history_steps"].to_list() == [6, 24, 48]
    assert (curve["n"] == 2 * 3 * 8 * 96).all() and (curve["mase"] > 0).all()
    made = pl.DataFrame({"history_steps": [12, 24, 48, 96], "mase": [2.0, 1.15, 1.05, 1.0]})
    assert recommend_min_encoder_length(made) == 48
    assert recommend_min_encoder_length(made, tolerance=0.2) == 24
