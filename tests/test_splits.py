from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from workbench import contract as c
from workbench.errors import BundleError, ConfigError
from workbench.simulator import generate
from workbench.splits import Holdout, holdout_from_bundle, make_holdout, split_frame, whole_fleet_holdout


@pytest.fixture(scope="module")
def fleet() -> pl.DataFrame:
    """Twenty servers (every profile, most more than once) over three days."""
    return generate(20, 3.0, seed=5)


def test_test_period_is_the_last_days_on_the_step_grid(fleet):
    holdout = make_holdout(fleet, test_days=1.0, test_servers=0.2, seed=0)
    last = fleet[c.TIMESTAMP].max()
    assert holdout.test_start == last + timedelta(seconds=c.STEP_SECONDS) - timedelta(days=1)
    assert holdout.test_start.tzinfo is not None
    assert len(holdout.test_servers) == 4
    assert make_holdout(fleet, test_days=1.0, test_servers=3.0, seed=0).test_servers == tuple(
        make_holdout(fleet, test_days=1.0, test_servers=3, seed=0).test_servers
    )
    odd = make_holdout(fleet, test_days=0.5001, test_servers=2, seed=0)
    assert int(odd.test_start.timestamp()) % c.STEP_SECONDS == 0
    assert odd.test_start == last + timedelta(seconds=c.STEP_SECONDS) - timedelta(hours=12)


def test_whole_fleet_holdout_tests_every_server(fleet):
    holdout = whole_fleet_holdout(fleet, test_days=1)
    assert set(holdout.test_servers) == set(fleet[c.SERVER].unique().to_list())
    assert holdout.test_start == make_holdout(fleet, test_days=1, test_servers=1, seed=0).test_start
    with pytest.raises(ConfigError, match="no training rows"):
        split_frame(fleet, holdout)  # nothing of this fleet may train a model
    with pytest.raises(ConfigError, match="no rows"):
        whole_fleet_holdout(fleet.clear(), test_days=1)


def test_split_is_disjoint_and_train_ends_before_the_test_period(fleet):
    holdout = make_holdout(fleet, test_days=1.0, test_servers=5, seed=1)
    train, test = split_frame(fleet, holdout)
    train_servers = set(train[c.SERVER].unique())
    test_servers = set(test[c.SERVER].unique())
    assert test_servers == set(holdout.test_servers) and len(test_servers) == 5
    assert not train_servers & test_servers
    assert train_servers | test_servers == set(fleet[c.SERVER].unique())
    assert train[c.TIMESTAMP].max() < holdout.test_start
    # The test part keeps the test servers' whole history: context before each origin.
    assert test.height == fleet.filter(pl.col(c.SERVER).is_in(holdout.test_servers)).height
    assert test[c.TIMESTAMP].min() == fleet[c.TIMESTAMP].min()


def test_same_seed_same_holdout_other_seed_other_servers(fleet):
    a = make_holdout(fleet, test_days=1, test_servers=0.3, seed=7)
    assert a == make_holdout(fleet, test_days=1, test_servers=0.3, seed=7)
    others = {make_holdout(fleet, test_days=1, test_servers=0.3, seed=s).test_servers for s in range(8)}
    assert len(others) > 1


@pytest.mark.parametrize("seed", range(5))
def test_every_profile_appears_in_test_and_keeps_a_training_server(seed):
    fleet = generate(16, 2.0, seed=2)
    holdout = make_holdout(fleet, test_days=0.5, test_servers=len(c.PROFILES), seed=seed)
    train, test = split_frame(fleet, holdout)
    assert set(test[c.PROFILE].unique()) == set(fleet[c.PROFILE].unique()) == set(c.PROFILES)
    assert set(train[c.PROFILE].unique()) == set(c.PROFILES)


def test_larger_test_share_follows_the_profile_shares(fleet):
    holdout = make_holdout(fleet, test_days=1, test_servers=10, seed=3)
    profile = dict(fleet.select(c.SERVER, c.PROFILE).unique().iter_rows())
    per_profile = pl.Series([profile[s] for s in holdout.test_servers]).value_counts()
    fleet_counts = dict(fleet.select(c.SERVER, c.PROFILE).unique()[c.PROFILE].value_counts().iter_rows())
    for name, n in per_profile.iter_rows():
        assert abs(n - 10 * fleet_counts[name] / 20) <= 1, (name, n)


def test_json_round_trip_and_bundle_record(fleet, tmp_path):
    holdout = make_holdout(fleet, test_days=1, test_servers=3, seed=0)
    assert Holdout.from_json(holdout.to_json()) == holdout
    (tmp_path / "training.json").write_text('{"epochs": 1, "holdout": ' + _json(holdout) + "}")
    assert holdout_from_bundle(tmp_path) == holdout
    (tmp_path / "training.json").write_text('{"epochs": 1}')
    assert holdout_from_bundle(tmp_path) is None
    (tmp_path / "training.json").write_text('{"holdout": {"test_start": "yesterday", "test_servers": ["a"]}}')
    with pytest.raises(BundleError, match="ISO 8601"):
        holdout_from_bundle(tmp_path)


def test_demo_bundle_has_no_holdout():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "models" / "demo"
    assert holdout_from_bundle(demo) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_days": 0}, "test_days: a number of days > 0"),
        ({"test_days": 3.0}, "test_days: must be shorter than the data"),
        ({"test_servers": 0}, r"test_servers: a fraction in \(0, 1\) or a count from 1 to 19"),
        ({"test_servers": 1.5}, r"a fraction in \(0, 1\)"),
        ({"test_servers": 20}, "count from 1 to 19"),
        ({"test_servers": True}, "count from 1 to 19"),
        ({"seed": -1}, "seed: an int >= 0"),
    ],
)
def test_bad_parameters_name_the_allowed_values(fleet, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_holdout(fleet, **{"test_days": 1.0, "test_servers": 0.2, "seed": 0, **kwargs})


def test_bad_holdouts_are_refused(fleet):
    start = datetime(2025, 1, 7, tzinfo=UTC)
    with pytest.raises(ConfigError, match="timezone-aware"):
        Holdout(datetime(2025, 1, 7), ("a",))
    with pytest.raises(ConfigError, match="step grid"):
        Holdout(start + timedelta(seconds=1), ("a",))
    with pytest.raises(ConfigError, match="at least one"):
        Holdout(start, ())
    with pytest.raises(ConfigError, match="at most once"):
        Holdout(start, ("a", "a"))
    with pytest.raises(ConfigError, match="keys allowed and needed"):
        Holdout.from_json({"test_start": start.isoformat()})
    with pytest.raises(ConfigError, match="not in the data"):
        split_frame(fleet, Holdout(start, ("nosuchserver",)))


def _json(holdout: Holdout) -> str:
    import json

    return json.dumps(holdout.to_json())


@pytest.mark.slow
def test_training_sees_only_the_train_part_and_records_the_holdout(tiny_fleet, tmp_path):
    from workbench.model import TrainConfig, load_bundle, save_bundle
    from workbench.model.train import train

    holdout = make_holdout(tiny_fleet, test_days=0.5, test_servers=2, seed=0)
    bundle = train(tiny_fleet, TrainConfig.preset("tiny"), holdout=holdout, progress=False)
    record = bundle.training
    assert record["holdout"] == holdout.to_json()
    assert record["servers"] == 6 and record["stopped_by"] == "max_epochs"
    assert datetime.fromisoformat(record["data_end"]) < holdout.test_start
    assert holdout_from_bundle(load_bundle(save_bundle(bundle, tmp_path / "b"), device="cpu")) == holdout


@pytest.mark.slow
def test_a_fall_smaller_than_min_delta_is_no_improvement(tiny_fleet):
    from workbench.model import TrainConfig
    from workbench.model.train import train

    config = TrainConfig.preset("tiny", max_epochs=6, patience=1, min_delta=1e3)
    record = train(tiny_fleet, config, progress=False).training
    # Only the first epoch counts as an improvement, so the second one stops the run.
    assert record["stopped_by"] == "early_stopping" and record["epochs"] == 2


@pytest.mark.slow
def test_train_command_holds_out_and_stops_on_time(tiny_fleet_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from workbench.cli import main

    out = tmp_path / "bundle"
    args = ["train", "--data", str(tiny_fleet_dir), "--out", str(out), "--preset", "tiny", "--no-progress"]
    timed = ["--set", "max_epochs=50", "--set", "max_time_minutes=0.0001"]
    result = CliRunner().invoke(main, [*args, "--holdout-days", "0.5", "--holdout-servers", "0.25", *timed])
    assert result.exit_code == 0, result.output
    assert "stopped by max_time" in result.output and "held out 2 servers" in result.output
    record = json.loads((out / "training.json").read_text())
    assert len(record["holdout"]["test_servers"]) == 2 and record["stopped_by"] == "max_time"
    assert record["epochs"] < 50
    lonely = CliRunner().invoke(main, [*args, "--holdout-days", "0.5"])
    assert lonely.exit_code == 2 and "go together" in lonely.output
    bad = CliRunner().invoke(main, [*args, "--holdout-days", "0.5", "--holdout-servers", "many"])
    assert bad.exit_code == 1 and "test_servers: a fraction in (0, 1) or a count" in bad.output


def test_max_time_setting_is_validated():
    from workbench.model import TrainConfig

    assert TrainConfig(max_time_minutes=1).max_time_minutes == 1
    with pytest.raises(ConfigError, match="max_time_minutes: a number of minutes > 0, or null"):
        TrainConfig(max_time_minutes=0)
    with pytest.raises(ConfigError, match="max_time_minutes"):
        TrainConfig.from_dict({"max_time_minutes": "soon"})


def test_validation_keeps_a_few_spread_history_lengths_per_server(tiny_fleet):
    from workbench.features import TIME_IDX, to_model_frame
    from workbench.model import TrainConfig
    from workbench.model.sampler import validation_windows
    from workbench.model.series import SeriesTable, valid_windows
    from workbench.model.train import split_point

    config = TrainConfig.preset("tiny", targets=("cpu_pct",))
    frame = to_model_frame(tiny_fleet, config.targets)
    cutoff = split_point(frame, config)
    table = SeriesTable.from_model_frame(
        frame, config.targets, {p: i for i, p in enumerate(sorted(set(frame.profile)))}
    )
    lengths = {"min_encoder": config.min_encoder_length, "max_encoder": config.max_encoder_length}
    windows = valid_windows(table, **lengths, horizon=config.horizon, first_decoder_step=cutoff + 1)
    assert len(windows) == 8  # one decoder per server: the last 96 steps
    assert (table.step_of(windows.decoder_start, windows.series) == cutoff + 1).all()
    every, every_length = validation_windows(windows, **lengths, count=0)
    assert len(every) == 8 * (48 - 12 + 1) and sorted(set(every_length)) == list(range(12, 49))
    thin, thin_length = validation_windows(windows, **lengths, count=4)
    assert sorted(set(thin_length)) == [12, 24, 36, 48]  # min..max encoder length of the tiny preset
    assert len(thin) == 8 * 4
    assert int(frame[TIME_IDX].max()) == cutoff + config.horizon
