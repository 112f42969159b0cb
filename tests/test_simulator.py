from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator import PROFILE_DEFAULTS, SimulatorConfig, generate, make_fleet
from workbench.simulator.fleet import profile_counts
from workbench.simulator.generate import STEPS_PER_DAY


@pytest.fixture(scope="module")
def week() -> pl.DataFrame:
    return generate(14, 7, seed=3)


def test_same_seed_same_frame_and_different_seed_different_values() -> None:
    first = generate(4, 0.5, seed=11)
    assert first.equals(generate(4, 0.5, seed=11))
    other = generate(4, 0.5, seed=12)
    assert not first.equals(other)
    assert not np.allclose(first["cpu_pct"].to_numpy(), other["cpu_pct"].to_numpy())


def test_frame_has_contract_columns_grid_and_validates(week: pl.DataFrame) -> None:
    assert week.columns == list(contract.COLUMNS)
    assert week.schema == pl.Schema(contract.SCHEMA)
    assert week.height == 14 * 7 * STEPS_PER_DAY
    assert contract.validate(week).equals(week)
    assert week.null_count().sum_horizontal().item() == 0
    steps = week.group_by(contract.SERVER).agg(pl.col(contract.TIMESTAMP).diff().dt.total_seconds().unique())
    assert steps[contract.TIMESTAMP].explode().drop_nulls().unique().to_list() == [contract.STEP_SECONDS]
    assert week[contract.TIMESTAMP].min() == datetime(2025, 1, 6, tzinfo=UTC)
    assert set(week[contract.STATE].unique()) >= {"healthy", "heavy_load", "idle", "morning_spike", "maintenance"}
    assert week.equals(week.sort(contract.SERVER, contract.TIMESTAMP))


@pytest.mark.parametrize("n", [7, 10, 100, 1000])
def test_every_profile_present_and_names_infer_back(n: int) -> None:
    fleet = make_fleet(n, seed=0)
    assert fleet.size == n == len(set(fleet.names))
    assert set(fleet.profiles) == set(contract.PROFILES)
    assert all(contract.infer_profile(name) == p for name, p in zip(fleet.names, fleet.profiles, strict=True))
    assert list(fleet.names) == sorted(fleet.names)


def test_profile_mix_follows_weights_and_small_fleets() -> None:
    counts = profile_counts(1000)
    assert sum(counts.values()) == 1000
    assert max(counts, key=counts.__getitem__) == "web_api"
    assert sum(profile_counts(3).values()) == 3
    assert profile_counts(1) == {p: int(p == "web_api") for p in contract.PROFILES}


def test_names_widen_when_a_profile_outgrows_its_digits() -> None:
    fleet = make_fleet(400, seed=0)
    con = [n for n in fleet.names if n.startswith("ppcon")]
    assert len(con) > 9 and con[0] == "ppcon01"
    assert make_fleet(7, seed=0).names[4] == "ppml0001"


def test_profile_table_covers_contract() -> None:
    assert set(PROFILE_DEFAULTS) == set(contract.PROFILES)


def test_diurnal_pattern_visible_for_business_profile(week: pl.DataFrame) -> None:
    web = week.filter(pl.col(contract.PROFILE) == "web_api").with_columns(hour=pl.col(contract.TIMESTAMP).dt.hour())
    peak = web.filter(pl.col("hour").is_between(12, 16))["cpu_pct"].mean()
    night = web.filter(pl.col("hour").is_between(0, 4))["cpu_pct"].mean()
    assert peak > 1.3 * night


def test_weekend_quieter_for_business_not_for_batch(week: pl.DataFrame) -> None:
    weekend = pl.col(contract.TIMESTAMP).dt.weekday() >= 6
    means = week.group_by(contract.PROFILE, weekend.alias("weekend")).agg(pl.col("cpu_pct").mean())

    def ratio(profile: str) -> float:
        rows = dict(means.filter(pl.col(contract.PROFILE) == profile).select("weekend", "cpu_pct").iter_rows())
        return rows[True] / rows[False]

    assert ratio("risk_analytics") < 0.7
    assert 0.85 < ratio("ml_compute") < 1.15


def test_cpu_and_latency_are_coupled(week: pl.DataFrame) -> None:
    for _, server in week.group_by(contract.SERVER):
        # rank correlation: a latency incident's spike is no outlier that hides the coupling
        assert server.select(pl.corr("cpu_pct", "latency_ms", method="spearman")).item() > 0.5
        assert np.corrcoef(server["net_in_mb_s"], server["net_out_mb_s"])[0, 1] > 0.5


def test_error_rate_rises_when_memory_nears_full() -> None:
    frame = generate(20, 2, seed=5, config=SimulatorConfig(incident_rates={"memory_leak": 1.0}))
    high = frame.filter(pl.col("mem_pct") > 90)["error_rate"]
    assert high.len() > 0
    assert high.mean() > 3 * frame.filter(pl.col("mem_pct") < 70)["error_rate"].mean()


def test_disk_fills_and_is_cleaned_up() -> None:
    frame = generate(7, 20, seed=2).filter(pl.col(contract.PROFILE) == "data_ingest")
    disk = frame["disk_pct"].to_numpy()
    steps = np.diff(disk)
    assert np.median(steps) > 0
    assert steps.min() < -3


def test_chunked_generation_equals_one_shot() -> None:
    one_day = generate(5, 1, seed=9)
    two_days = generate(5, 2, seed=9)
    half_day = generate(5, 0.5, seed=9)
    first_day = two_days.filter(pl.col(contract.TIMESTAMP) < datetime(2025, 1, 7, tzinfo=UTC))
    assert first_day.equals(one_day)
    assert one_day.filter(pl.col(contract.TIMESTAMP) < datetime(2025, 1, 6, 12, tzinfo=UTC)).equals(half_day)


def test_start_and_progress_options() -> None:
    frame = generate(2, 0.1, seed=1, start=datetime(2025, 3, 1, 6, 5), progress=True)
    assert frame[contract.TIMESTAMP].min() == datetime(2025, 3, 1, 6, 5, tzinfo=UTC)
    off_grid = generate(2, 0.1, seed=1, start=datetime(2025, 3, 1, 6, 9, 59, 999, tzinfo=UTC))
    assert off_grid.equals(frame)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_servers": 0}, "n_servers"),
        ({"days": 0}, "days"),
        ({"days": 0.0001}, "step"),
        ({"seed": -1}, "seed"),
        ({"start": datetime(2099, 12, 31, tzinfo=UTC), "days": 3}, "between"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, message: str) -> None:
    args = {"n_servers": 2, "days": 1.0, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        generate(**args)
