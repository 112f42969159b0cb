from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator import (
    GROUND_TRUTH_SCHEMA,
    INCIDENT_TYPES,
    KINDS,
    Scenario,
    SimulatorConfig,
    make_fleet,
    simulate,
)
from workbench.simulator.arrivals import base_rates
from workbench.simulator.incidents import PRIMARY_METRICS, background_ceiling, target_cap
from workbench.simulator.profiles import CPU, ERROR_RATE, LATENCY
from workbench.thresholds import Thresholds

STEP = timedelta(seconds=contract.STEP_SECONDS)
BUSY = SimulatorConfig(incident_rates=dict.fromkeys(INCIDENT_TYPES, 1.0))  # about 5 incidents per server-day
LEVELS = Thresholds()
WITH_LEVEL = sorted({m for p in contract.PROFILES for m in LEVELS.for_profile(p)})  # metrics that can be critical


@pytest.fixture(scope="module")
def run():
    return simulate(make_fleet(24, seed=4), 3, scenario="critical", config=BUSY)


def primary_at(metrics: pl.DataFrame, incidents: pl.DataFrame, column: str) -> pl.Series:
    """The incident's primary metric on its server at the time in ``column``."""
    long = metrics.unpivot(
        on=[k.metric for k in KINDS], index=[contract.SERVER, contract.TIMESTAMP], variable_name="metric"
    )
    keys = incidents.select(contract.SERVER, "metric", pl.col(column).alias(contract.TIMESTAMP), "incident_id")
    joined = keys.join(long, on=[contract.SERVER, contract.TIMESTAMP, "metric"], how="left")
    return joined.sort("incident_id")["value"]


def test_ground_truth_table_has_its_schema_every_type_and_the_thresholds(run) -> None:
    table = run.incidents
    assert table.schema == pl.Schema(GROUND_TRUTH_SCHEMA)
    assert table["incident_id"].to_list() == list(range(table.height))
    assert table.equals(table.sort("precursor_start", contract.SERVER))
    assert set(table["incident_type"]) == set(INCIDENT_TYPES)
    metric_of = {k.name: k.metric for k in KINDS}
    assert (table["metric"] == table["incident_type"].replace_strict(metric_of)).all()
    levels = Thresholds()
    expected = [levels.level(m, p).critical for m, p in table.select("metric", contract.PROFILE).iter_rows()]
    assert table["threshold"].to_list() == expected
    assert set(table["scenario"]) == {"critical"}


def test_phases_are_ordered_and_precursors_last_tens_of_minutes_to_hours(run) -> None:
    done = run.incidents.drop_nulls("onset")
    assert done.height > 150
    order = ["precursor_start", "onset", "peak", "end", "recovered"]
    for early, late in zip(order, order[1:], strict=False):
        strict = early != "onset"  # the onset may fall on the peak itself
        ok = (done[early] < done[late]) if strict else (done[early] <= done[late])
        assert ok.all(), (early, late)
    lead = (done["onset"] - done["precursor_start"]).dt.total_minutes()
    assert lead.min() >= 15 and lead.max() <= 6 * 60
    assert lead.median() >= 45


def test_primary_metric_crosses_critical_exactly_at_onset(run) -> None:
    done = run.incidents.drop_nulls("onset")
    at_onset = primary_at(run.metrics, done, "onset")
    before = primary_at(run.metrics, done.with_columns(pl.col("onset") - STEP), "onset")
    at_start = primary_at(run.metrics, done, "precursor_start")
    assert (at_onset >= done["threshold"]).all()
    assert (before < done["threshold"]).all()
    levels = Thresholds()
    warning = [levels.level(m, p).warning for m, p in done.select("metric", contract.PROFILE).iter_rows()]
    ceiling = background_ceiling(done["threshold"].to_numpy(), np.array(warning))
    assert (at_start.to_numpy() < ceiling).all()  # the background stays well below critical
    assert (at_start / done["threshold"]).median() < 0.75


def test_linear_extrapolation_of_the_early_precursor_falls_short(run) -> None:
    shortfalls: dict[str, list[bool]] = {}
    for row in run.incidents.drop_nulls("onset").iter_rows(named=True):
        window = pl.col(contract.TIMESTAMP).is_between(row["precursor_start"], row["onset"])
        y = run.metrics.filter((pl.col(contract.SERVER) == row[contract.SERVER]) & window)[row["metric"]].to_numpy()
        half = max(2, len(y) // 2)
        slope, intercept = np.polyfit(np.arange(half), y[:half], 1)
        shortfalls.setdefault(row["incident_type"], []).append(slope * (len(y) - 1) + intercept < row["threshold"])
    assert set(shortfalls) == set(INCIDENT_TYPES)
    assert all(np.mean(v) >= 0.75 for v in shortfalls.values()), {k: np.mean(v) for k, v in shortfalls.items()}


def test_critical_values_and_states_belong_to_incidents_only(run) -> None:
    metrics, table = run.metrics, run.incidents
    levels = Thresholds()
    for kind in KINDS:
        critical = pl.col(contract.PROFILE).replace_strict(
            {p: levels.level(kind.metric, p).critical for p in contract.PROFILES}
        )
        over = metrics.filter(pl.col(kind.metric) >= critical)
        assert over.height > 0 and set(over[contract.STATE]) == {"critical_issue"}, kind.name
    windows = table.drop_nulls("onset").select(
        contract.SERVER, pl.datetime_ranges("onset", pl.col("end") - STEP, interval="5m").alias(contract.TIMESTAMP)
    )
    windows = windows.explode(contract.TIMESTAMP).filter(
        pl.col(contract.TIMESTAMP) <= metrics[contract.TIMESTAMP].max()
    )
    labelled = metrics.filter(pl.col(contract.STATE) == "critical_issue").select(contract.SERVER, contract.TIMESTAMP)
    assert labelled.sort(pl.all()).equals(windows.sort(pl.all()))


def critical_of(metric: str) -> pl.Expr:
    """Critical level of ``metric`` on each row's profile (infinite where it has none)."""
    level = {p: LEVELS.level(metric, p) for p in contract.PROFILES}
    return pl.col(contract.PROFILE).replace_strict({p: lv.critical if lv else np.inf for p, lv in level.items()})


def test_every_metric_with_a_critical_level_has_an_incident_type_that_drives_it() -> None:
    assert set(WITH_LEVEL) == set(PRIMARY_METRICS) == {k.metric for k in KINDS}
    assert LATENCY in PRIMARY_METRICS


def test_critical_values_lie_inside_incident_windows_in_a_healthy_month() -> None:
    result = simulate(make_fleet(200, seed=12), 30, scenario="healthy")
    metrics, table = result.metrics, result.incidents
    windows = table.select(
        contract.SERVER,
        pl.datetime_ranges("precursor_start", "recovered", interval="5m", closed="left").alias(contract.TIMESTAMP),
    ).explode(contract.TIMESTAMP)
    outside = metrics.join(windows, on=[contract.SERVER, contract.TIMESTAMP], how="anti")
    critical = outside.select(pl.any_horizontal([pl.col(m) >= critical_of(m) for m in WITH_LEVEL]).mean()).item()
    assert table.height > 300 and outside.height > 0.9 * metrics.height
    assert critical <= 0.001, critical


def test_latency_targets_scale_with_the_profile_critical_level() -> None:
    critical = np.array([150.0, 500.0])
    assert target_cap(LATENCY, critical).tolist() == [450.0, 1500.0]
    assert target_cap(CPU, critical).tolist() == [100.0, 100.0]
    assert target_cap(ERROR_RATE, np.array([0.05])).tolist() == [0.4]


def test_recovery_follows_each_incident(run) -> None:
    done = run.incidents.drop_nulls("onset").filter(pl.col("end") <= run.metrics[contract.TIMESTAMP].max())
    states = done.select(contract.SERVER, pl.col("end").alias(contract.TIMESTAMP)).join(
        run.metrics, on=[contract.SERVER, contract.TIMESTAMP]
    )
    assert set(states[contract.STATE]) == {"recovery"}


def free_days(table: pl.DataFrame, names: tuple[str, ...], span_end, days: float) -> np.ndarray:
    """Server-days in which each server could start an incident (not busy with one)."""
    busy = table.group_by(contract.SERVER).agg(
        (pl.min_horizontal("recovered", pl.lit(span_end)) - pl.col("precursor_start")).dt.total_seconds().sum()
    )
    seconds = dict(busy.iter_rows())
    return np.array([days - seconds.get(name, 0) / 86_400 for name in names])


@pytest.mark.parametrize("scenario", ["healthy", "critical"])
def test_each_type_appears_with_its_configured_frequency(scenario: str) -> None:
    fleet, days = make_fleet(40, seed=8), 3
    config = SimulatorConfig(
        incident_rates={
            "memory_leak": 0.6,
            "disk_fill": 0.4,
            "traffic_growth": 0.5,
            "dependency_storm": 0.3,
            "latency_saturation": 0.3,
        }
    )
    result = simulate(fleet, days, scenario=scenario, config=config)
    span_end = result.metrics[contract.TIMESTAMP].max() + STEP
    rates = base_rates(fleet.profiles, config.incident_rates)
    chosen = Scenario.named(scenario)
    scenario_rate = np.where(chosen.affected(fleet.size, fleet.seed), chosen.rate_multiplier, 1.0)
    exposure = free_days(result.incidents, fleet.names, span_end, days) * scenario_rate
    counts = dict(result.incidents.group_by("incident_type").len().iter_rows())
    for k, kind in enumerate(KINDS):
        expected = float(exposure @ rates[:, k])
        assert expected > 15
        assert abs(counts.get(kind.name, 0) - expected) <= 4 * np.sqrt(expected) + 2, (kind.name, counts, expected)


def test_scenario_changes_only_the_affected_servers() -> None:
    fleet = make_fleet(20, seed=6)
    calm = simulate(fleet, 2, config=BUSY)
    hard = simulate(fleet, 2, scenario="critical", config=BUSY)
    assert len(hard.affected) == 6 and calm.affected == ()
    others = pl.col(contract.SERVER).is_in(hard.affected).not_()
    assert hard.metrics.filter(others).equals(calm.metrics.filter(others))
    ignore = ["incident_id", "scenario"]
    assert hard.incidents.filter(others).drop(ignore).equals(calm.incidents.filter(others).drop(ignore))
    mine = pl.col(contract.SERVER).is_in(hard.affected)
    assert hard.incidents.filter(mine).height > 2 * calm.incidents.filter(mine).height
    assert set(hard.incidents.filter(mine)["intensity"]) == {2.0}
    assert set(hard.incidents.filter(others)["intensity"]) == {1.0}


def test_affected_servers_are_seeded_nested_and_at_least_one() -> None:
    degrading, critical = Scenario.named("degrading"), Scenario.named("critical")
    small, large = degrading.affected(100, seed=1), critical.affected(100, seed=1)
    assert small.sum() == 15 and large.sum() == 30 and (large[small]).all()
    assert not np.array_equal(large, critical.affected(100, seed=2))
    assert degrading.affected(1, seed=0).sum() == 1
    assert Scenario.named("healthy").affected(50, seed=0).sum() == 0


def test_chunking_does_not_change_the_ground_truth() -> None:
    fleet = make_fleet(16, seed=2)
    one, two = simulate(fleet, 1, config=BUSY), simulate(fleet, 2, config=BUSY)
    day_end = one.metrics[contract.TIMESTAMP].max() + STEP
    cut = two.incidents.filter(pl.col("precursor_start") < day_end).with_columns(
        pl.when(pl.col("onset") < day_end).then(pl.col("onset")).alias("onset")
    )
    assert one.incidents.height > 5 and one.incidents.equals(cut)
    assert one.incidents["onset"].null_count() >= 1  # an onset beyond the span is unknown


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Scenario.named("chaos"), "allowed: healthy, degrading, critical"),
        (lambda: Scenario("x", affected_fraction=1.5), "affected_fraction"),
        (lambda: Scenario("x", rate_multiplier=50), r"rate_multiplier=50 must lie in \[0, 20\]"),
        (lambda: Scenario("x", intensity=0.5), "intensity"),
        (lambda: SimulatorConfig(incident_rates={"meteor": 1.0}), "allowed: memory_leak, disk_fill"),
        (lambda: SimulatorConfig(incident_rates={"disk_fill": -1.0}), "disk_fill"),
    ],
)
def test_bad_settings_name_what_is_allowed(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()
