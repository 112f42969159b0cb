import numpy as np
import polars as pl
import pytest

from workbench import contract
from workbench.simulator import SimulatorConfig, generate, make_fleet, simulate
from workbench.simulator.states import (
    HEALTHY,
    MAINTENANCE,
    RECOVERY,
    ChainRates,
    MaintenanceWindows,
    effect_factors,
    run_chain,
)

HOUR = pl.col(contract.TIMESTAMP).dt.hour()
WEEKDAY = pl.col(contract.TIMESTAMP).dt.weekday()  # Monday = 1


@pytest.fixture(scope="module")
def week() -> pl.DataFrame:
    return generate(30, 7, seed=12)


def transitions(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows where a server's state changes, with the state before."""
    previous = pl.col(contract.STATE).shift(1).over(contract.SERVER).alias("before")
    return frame.with_columns(previous).filter(pl.col("before").is_not_null() & (pl.col("before") != pl.col("state")))


def test_every_background_state_occurs_and_healthy_dominates(week: pl.DataFrame) -> None:
    shares = dict(week[contract.STATE].value_counts(normalize=True).iter_rows())
    assert set(shares) >= {"healthy", "heavy_load", "idle", "morning_spike", "maintenance", "recovery"}
    assert set(shares) <= set(contract.STATES)
    assert shares["healthy"] > 0.6
    assert shares.get("offline", 0) < 0.01


def test_morning_spikes_happen_on_weekday_mornings_of_business_servers(week: pl.DataFrame) -> None:
    spikes = week.filter(pl.col(contract.STATE) == "morning_spike")
    assert spikes.height > 50
    assert spikes.select(HOUR.is_between(7, 9).all() & (WEEKDAY <= 5).all()).item()
    assert not spikes[contract.PROFILE].is_in(["ml_compute", "data_ingest"]).any()  # no weekly rhythm


def test_maintenance_stays_in_weekly_night_windows_and_ends_in_recovery(week: pl.DataFrame) -> None:
    maintenance = week.filter(pl.col(contract.STATE) == "maintenance")
    assert maintenance.height > 20
    assert maintenance.select(HOUR.max()).item() < 8
    per_server = maintenance.group_by(contract.SERVER).agg(pl.col(contract.TIMESTAMP).dt.weekday().n_unique())
    assert per_server[contract.TIMESTAMP].max() == 1  # one weekly window per server
    left = transitions(week).filter(pl.col("before") == "maintenance")
    assert set(left[contract.STATE]) <= {"recovery", "critical_issue"} and left.height > 0


def test_states_move_the_metrics(week: pl.DataFrame) -> None:
    web = week.filter(pl.col(contract.PROFILE).is_in(["web_api", "generic", "database"]))
    cpu = dict(web.group_by(contract.STATE).agg(pl.col("cpu_pct").mean()).iter_rows())
    assert cpu["morning_spike"] > cpu["healthy"] > cpu["idle"]
    assert cpu["heavy_load"] > cpu["healthy"]
    io = dict(week.group_by(contract.STATE).agg((pl.col("disk_io_mb_s")).median()).iter_rows())
    assert io["maintenance"] > io["idle"]


def test_offline_reads_zero_activity_and_comes_back_through_recovery() -> None:
    config = SimulatorConfig(chain=ChainRates(offline_entry=0.005))
    frame = simulate(make_fleet(10, seed=3), 2, config=config).metrics
    offline = frame.filter(pl.col(contract.STATE) == "offline")
    assert offline.height > 20
    activity = [m for m in contract.METRIC_NAMES if m != "disk_pct"]
    assert offline.select(pl.max_horizontal(activity).max()).item() == 0.0
    assert offline["disk_pct"].min() > 10
    left = transitions(frame).filter(pl.col("before") == "offline")
    assert set(left[contract.STATE]) == {"recovery"}


def test_chain_without_chances_stays_put_and_uses_its_windows() -> None:
    fleet = make_fleet(5, seed=0)
    windows = MaintenanceWindows.draw(fleet)
    t = 1_736_121_600 + np.arange(288, dtype=np.int64) * contract.STEP_SECONDS  # Monday 2025-01-06
    seasonal = np.ones((288, 5))
    start = np.full(5, MAINTENANCE, dtype=np.uint8)
    codes = run_chain(start, t, seasonal, np.full((288, 5), 0.999999), windows)
    outside = (windows.position(t[:1]) >= windows.length_s)[0]
    assert outside.any() and (codes[:, outside] == RECOVERY).all()  # maintenance outside its window ends at once
    still = run_chain(np.full(5, HEALTHY, dtype=np.uint8), t, seasonal, np.full((288, 5), 0.999999), windows)
    assert (still == HEALTHY).all()


def test_effect_factors_follow_the_table() -> None:
    codes = np.array([[contract.STATES.index("idle"), contract.STATES.index("offline")]])
    factors = effect_factors(codes)
    assert factors["load"].shape == (1, 2)
    assert factors["load"][0, 0] < 1 and factors["load"][0, 1] == 0
