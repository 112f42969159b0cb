"""Baselines: exact on the series they are built for, Prometheus' predict_linear, residual bands."""

import numpy as np
import polars as pl
import pytest

from workbench import contract as c
from workbench.baselines import (
    BASELINES,
    DEFAULT_BASELINES,
    LINEAR_WINDOW_STEPS,
    MSTL_NAME,
    SEASON_STEPS,
    WEEK_STEPS,
    MstlEts,
    Panel,
    forward_fill,
    last_value,
    last_value_paths,
    mstl_seasons,
    nan_quantiles,
    panel_from_frame,
    predict_linear,
    residual_band,
    seasonal_naive,
)
from workbench.evaluation.backtest import BacktestConfig

H = c.HORIZON_STEPS
LAST = 5_000_000


def panel(series: np.ndarray, targets=("cpu_pct",)) -> Panel:
    """One server per row of ``series`` (servers, steps), one target."""
    values = np.asarray(series, dtype=float)[..., None].repeat(len(targets), axis=-1)
    names = [f"ppweb{i:03d}" for i in range(len(values))]
    return Panel(names, ["web_api"] * len(names), tuple(targets), values, LAST)


def test_perfect_seasonal_series_gives_seasonal_naive_zero_error():
    t = np.arange(3 * SEASON_STEPS + 7)
    daily = 50 + 20 * np.sin(2 * np.pi * t / SEASON_STEPS) + 5 * np.cos(6 * np.pi * t / SEASON_STEPS)
    fc = seasonal_naive(panel(daily[None]))
    future = np.arange(len(t), len(t) + H)
    truth = 50 + 20 * np.sin(2 * np.pi * future / SEASON_STEPS) + 5 * np.cos(6 * np.pi * future / SEASON_STEPS)
    assert fc.source == "seasonal_naive" and fc.quantiles.shape == (1, 1, H, 3)
    np.testing.assert_allclose(fc.quantiles[0, 0], np.repeat(truth[:, None], 3, axis=1), atol=1e-9)


def test_straight_line_gives_predict_linear_zero_error():
    t = np.arange(200, dtype=float)
    fc = predict_linear(panel((10 + 0.05 * t)[None]))
    truth = 10 + 0.05 * np.arange(200, 200 + H)
    assert fc.source == "predict_linear"
    np.testing.assert_allclose(fc.quantiles[0, 0], np.repeat(truth[:, None], 3, axis=1), atol=1e-9)


def test_constant_gives_last_value_zero_error():
    fc = last_value(panel(np.full((2, 50), 42.0)))
    assert fc.source == "last_value" and fc.quantiles.shape == (2, 1, H, 3)
    assert np.all(fc.quantiles == 42.0)


def test_daily_median_is_the_last_days_median_flat_and_needs_a_whole_day():
    t = np.arange(2 * SEASON_STEPS)
    series = np.where(t % 2 == 0, 10.0, 30.0)
    series[-SEASON_STEPS:] += np.linspace(0, 1, SEASON_STEPS)  # the last day's median is 20.5
    fc = BASELINES["daily_median"].forecast(panel(np.stack([series, series])))
    expected = np.median(series[-SEASON_STEPS:])
    assert fc.source == "daily_median"
    np.testing.assert_allclose(fc.quantiles[:, 0, :, 1], expected)
    short = BASELINES["daily_median"].forecast(panel(series[None, : SEASON_STEPS - 1]))
    assert short.servers == [] and short.warming_up == {"ppweb000": SEASON_STEPS - 1}


def test_predict_linear_is_least_squares_over_the_last_hour_evaluated_after_the_last_sample():
    rng = np.random.default_rng(0)
    series = 40 + rng.normal(0, 3, size=100)
    fc = predict_linear(panel(series[None]))
    x = np.arange(LINEAR_WINDOW_STEPS) * c.STEP_SECONDS  # Prometheus fits on the samples' timestamps
    slope, intercept = np.polyfit(x, series[-LINEAR_WINDOW_STEPS:], 1)
    now = x[-1]
    expected = intercept + slope * (now + np.arange(1, H + 1) * c.STEP_SECONDS)
    np.testing.assert_allclose(fc.quantiles[0, 0, :, 1], np.clip(expected, 0, 100), atol=1e-9)


def test_band_is_the_empirical_residual_quantiles_per_step():
    rng = np.random.default_rng(1)
    walk = 50 + np.cumsum(rng.normal(0, 1, size=400))
    values = walk[None, :, None]
    band = residual_band(values, last_value_paths, 4, origins=100)
    for h in (1, 4):
        ends = np.arange(400 - 1 - (100 + 4 - 1), 400 - 1)
        ends = ends[ends + h <= 399]
        resid = walk[ends + h] - walk[ends]
        lo, hi = np.quantile(resid, [0.1, 0.9])
        assert band[0, h - 1, 0, 0] == pytest.approx(min(lo, 0.0))
        assert band[0, h - 1, 0, 1] == pytest.approx(max(hi, 0.0))
    fc = last_value(panel(walk[None]), residual_origins=100)
    q = fc.quantiles[0, 0]
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])
    assert q[-1, 2] - q[-1, 0] > q[0, 2] - q[0, 0] > 0  # a random walk's band widens with the horizon


def test_servers_without_enough_history_are_warming_up_not_forecast():
    series = np.full((2, 400), 30.0)
    series[1, :200] = np.nan  # 200 steps of history: too short for the daily season
    fc = seasonal_naive(panel(series))
    assert fc.servers == ["ppweb000"] and fc.warming_up == {"ppweb001": 200}
    assert fc.min_history == SEASON_STEPS
    assert last_value(panel(series)).servers == ["ppweb000", "ppweb001"]


def test_every_baseline_has_the_engines_output_shape(tiny_fleet):
    full = panel_from_frame(tiny_fleet, c.METRIC_NAMES)
    for name, baseline in BASELINES.items():
        fc = baseline.forecast(full)
        assert fc.source == name != "tft"
        assert fc.quantiles.shape == (8, len(c.METRIC_NAMES), H, 3)
        assert np.isfinite(fc.quantiles).all()
        assert (np.diff(fc.quantiles, axis=-1) >= 0).all()
        assert (fc.last_step == full.last_step).all()
        assert fc.summary().height == 8 * len(c.METRIC_NAMES)


def test_panel_from_frame_lays_rows_on_the_grid_and_carries_gaps_forward(tiny_fleet):
    server = tiny_fleet[c.SERVER][0]
    part = tiny_fleet.filter(pl.col(c.SERVER) == server)
    gapped = part.filter(pl.int_range(pl.len()) != 10)
    p = panel_from_frame(gapped, ["cpu_pct"])
    raw = panel_from_frame(gapped, ["cpu_pct"], fill=False)
    assert p.values.shape == (1, part.height, 1)
    assert np.isnan(raw.values[0, 10, 0]) and p.values[0, 10, 0] == p.values[0, 9, 0]
    assert p.until(p.last_step - 5, 20).values.shape == (1, 20, 1)
    assert p.until(p.last_step - 5).last_step == p.last_step - 5


def test_forward_fill_keeps_leading_gaps():
    x = np.array([[np.nan, 1.0, np.nan, 3.0, np.nan]])[..., None]
    np.testing.assert_array_equal(forward_fill(x)[0, :, 0], [np.nan, 1.0, 1.0, 3.0, 3.0])


def test_nan_quantiles_match_numpy():
    x = np.random.default_rng(2).normal(size=(3, 40, 5))
    x[0, :7, 1] = np.nan
    x[2, :, 4] = np.nan
    ours = nan_quantiles(x, (0.1, 0.5, 0.9), axis=1)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        theirs = np.nanquantile(x, [0.1, 0.5, 0.9], axis=1)
    np.testing.assert_allclose(ours, theirs)


# --------------------------------------------------------------------------- MSTL + AutoETS


def daily_sinusoid(days: float, servers: int = 1, seed: int = 0) -> np.ndarray:
    """``(servers, steps + H)``: a daily sine around 50 with a little noise; the last H steps are the future."""
    t = np.arange(int(days * SEASON_STEPS) + H)
    rng = np.random.default_rng(seed)
    return 50 + 20 * np.sin(2 * np.pi * t / SEASON_STEPS)[None] + rng.normal(0, 1, (servers, len(t)))


def test_mstl_median_follows_the_daily_shape_far_better_than_last_value():
    series = daily_sinusoid(4.3, servers=2)
    history, future = series[:, :-H], series[:, -H:]
    fc = MstlEts().forecast(panel(history))
    assert fc.source == MSTL_NAME == "mstl_ets" and fc.quantiles.shape == (2, 1, H, 3)
    assert fc.servers == ["ppweb000", "ppweb001"] and not fc.warming_up and not fc.missing
    scale = np.abs(history[:, SEASON_STEPS:] - history[:, :-SEASON_STEPS]).mean(axis=1)
    mase_mstl = (np.abs(future - fc.quantiles[:, 0, :, 1]).mean(axis=1) / scale).mean()
    mase_last = (np.abs(future - last_value(panel(history)).quantiles[:, 0, :, 1]).mean(axis=1) / scale).mean()
    assert mase_mstl < 0.2 * mase_last
    assert (np.diff(fc.quantiles, axis=-1) >= 0).all() and (fc.quantiles[..., 2] > fc.quantiles[..., 0]).all()
    inside = (fc.quantiles[:, 0, :, 0] <= future) & (future <= fc.quantiles[:, 0, :, 2])
    assert 0.5 <= inside.mean() <= 1.0


def test_mstl_servers_with_too_little_history_are_warming_up():
    series = daily_sinusoid(2.5, servers=2)[:, :-H]
    series[1, : len(series[1]) - 400] = np.nan  # 400 steps: fewer than two daily cycles
    fc = MstlEts().forecast(panel(series))
    assert fc.servers == ["ppweb000"] and fc.warming_up == {"ppweb001": 400}
    assert fc.min_history == 2 * SEASON_STEPS


def test_mstl_reports_a_missing_metric_as_the_rules_do():
    series = daily_sinusoid(2.5, servers=2)[:, :-H]
    p = panel(series, targets=("cpu_pct", "mem_pct"))
    p.values[1, :, 1] = np.nan  # ppweb001 never reported mem_pct
    fc = MstlEts().forecast(p)
    assert fc.servers == ["ppweb000"] and fc.missing == {"ppweb001": ["mem_pct"]}
    assert fc.missing == seasonal_naive(p).missing and fc.warming_up == {}


def test_mstl_adds_the_weekly_season_from_two_weeks_and_is_a_registered_baseline():
    assert mstl_seasons(2 * WEEK_STEPS - 1) == (SEASON_STEPS,)
    assert mstl_seasons(2 * WEEK_STEPS) == (SEASON_STEPS, WEEK_STEPS) == (288, 2016)
    assert isinstance(BASELINES[MSTL_NAME], MstlEts) and MSTL_NAME not in DEFAULT_BASELINES
    assert BacktestConfig(baselines=(*DEFAULT_BASELINES, MSTL_NAME)).baselines[-1] == MSTL_NAME
    assert BacktestConfig().baselines == DEFAULT_BASELINES
