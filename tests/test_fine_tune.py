"""Fine-tuning a saved bundle on new data: lineage, settings, the before/after measure, refusals, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from workbench import contract as c
from workbench.cli import main
from workbench.data import write_parquet
from workbench.errors import ConfigError
from workbench.inference.engine import Engine
from workbench.manifest import weights_digest
from workbench.model import load_bundle, save_bundle
from workbench.model.fine_tune import FIXED_SETTINGS, fine_tune, fine_tune_config
from workbench.simulator import generate

FINE_TUNE_CHANGES = {"learning_rate", "max_epochs", "patience", "max_time_minutes"}


@pytest.fixture(scope="module")
def new_fleet(tiny_fleet) -> pl.DataFrame:
    """Another seed and scenario, every server renamed: servers the parent never saw."""
    frame = generate(6, 2.0, seed=11, scenario="critical")
    frame = frame.with_columns(("new-" + pl.col(c.SERVER)).alias(c.SERVER))
    assert not set(frame[c.SERVER]) & set(tiny_fleet[c.SERVER])
    return frame


@pytest.fixture(scope="module")
def parent(tiny_bundle_dir):
    return load_bundle(tiny_bundle_dir, device="cpu")


@pytest.fixture(scope="module")
def child_dir(parent, new_fleet, tmp_path_factory):
    config = fine_tune_config(parent.config, {"max_epochs": 3})
    child = fine_tune(parent, new_fleet, config, progress=False)
    return save_bundle(child, tmp_path_factory.mktemp("child") / "child")


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_child_names_its_parent_by_weights_digest(child_dir, tiny_bundle_dir):
    training = json.loads((child_dir / "training.json").read_text())
    assert training["parent"] == {
        "name": tiny_bundle_dir.name,
        "path": str(tiny_bundle_dir.resolve()),
        "sha256": weights_digest(tiny_bundle_dir / "model.safetensors"),
    }
    assert training["parent"]["sha256"] != weights_digest(child_dir / "model.safetensors")


def test_the_child_has_the_parents_settings_but_a_tenth_of_its_learning_rate(child_dir, parent):
    child = load_bundle(child_dir, device="cpu")
    assert child.config.learning_rate == pytest.approx(parent.config.learning_rate * 0.1)
    assert child.hparams["learning_rate"] == child.config.learning_rate  # what the optimizer was given
    old, new = parent.config.to_dict(), child.config.to_dict()
    assert {k for k in new if new[k] != old[k]} == FINE_TUNE_CHANGES
    tune = json.loads((child_dir / "training.json").read_text())["fine_tune"]
    assert set(tune["changed_settings"]) == FINE_TUNE_CHANGES
    assert (tune["learning_rate"], tune["max_epochs"], tune["patience"]) == (child.config.learning_rate, 3, 2)
    assert tune["epochs"] == 3 and tune["stopped_by"] == "max_epochs"


def test_the_child_reads_inputs_through_the_parents_spec(child_dir, parent):
    child = load_bundle(child_dir, device="cpu")
    assert child.spec == parent.spec  # scalers, lengths and targets are not refitted on the new data
    assert json.loads((child_dir / "dataset.json").read_text()) == parent.spec.to_json()


def test_fine_tuning_lowers_the_loss_on_the_new_validation_windows(child_dir, parent):
    tune = json.loads((child_dir / "training.json").read_text())["fine_tune"]
    assert tune["kept"] == "fine_tuned" and tune["validation_windows"] > 0
    assert tune["val_loss_fine_tuned"] < tune["val_loss_parent"]
    assert not _states_equal(load_bundle(child_dir, device="cpu").network, parent.network)


def test_the_child_forecasts_servers_the_parent_never_saw(child_dir, new_fleet):
    child = load_bundle(child_dir, device="cpu")
    # Server names are group ids only; the one categorical input is the contract's profile.
    assert set(child.hparams["embedding_labels"]) == {c.PROFILE}
    engine = Engine(child)
    engine.ingest(new_fleet)
    forecast = engine.forecast()
    assert forecast.servers == sorted(new_fleet[c.SERVER].unique())
    assert forecast.quantiles.shape == (6, len(child.targets), 96, 3)
    assert np.isfinite(forecast.quantiles).all()


def test_a_child_no_better_than_its_parent_keeps_the_parents_weights(parent, new_fleet):
    config = fine_tune_config(parent.config, {"learning_rate": 5.0, "max_epochs": 1})  # Adam at 5.0 wrecks it
    child = fine_tune(parent, new_fleet, config, progress=False)
    tune = child.training["fine_tune"]
    assert tune["kept"] == "parent" and tune["val_loss_fine_tuned"] > tune["val_loss_parent"]
    assert _states_equal(child.network, parent.network)


def test_new_data_without_one_of_the_parents_targets_is_refused(parent, new_fleet):
    lacking = c.validate(new_fleet.drop("latency_ms"))
    with pytest.raises(ConfigError, match=r"the new data has no latency_ms values, but the parent bundle forecasts"):
        fine_tune(parent, lacking, fine_tune_config(parent.config), progress=False)


def test_new_data_too_short_for_a_training_and_a_validation_window_is_refused(parent):
    short = generate(3, 0.5, seed=1)
    with pytest.raises(ConfigError, match=r"training needs at least min_encoder_length \+ horizon"):
        fine_tune(parent, short, fine_tune_config(parent.config), progress=False)


@pytest.mark.parametrize("setting", ["hidden_size", "targets", "max_encoder_length"])
def test_settings_the_parents_weights_fix_cannot_be_changed(parent, setting):
    assert setting in FIXED_SETTINGS
    with pytest.raises(ConfigError, match=f"{setting} cannot be set"):
        fine_tune_config(parent.config, {setting: getattr(parent.config, setting)})


def test_settings_override_the_fine_tuning_defaults(parent):
    config = fine_tune_config(parent.config, {"learning_rate": 1e-5, "seed": 7, "patience": 5})
    assert (config.learning_rate, config.seed, config.patience, config.max_epochs) == (1e-5, 7, 5, 10)
    assert config.hidden_size == parent.config.hidden_size


@pytest.fixture(scope="module")
def new_fleet_dir(new_fleet, tmp_path_factory):
    return write_parquet(new_fleet, tmp_path_factory.mktemp("new-fleet"))


@pytest.fixture
def calibrated_parent(tiny_bundle_dir, tmp_path):
    """The tiny bundle with an incident-calibration section, which the child must not inherit."""
    dst = shutil.copytree(tiny_bundle_dir, tmp_path / "parent")
    (dst / "calibration.json").write_text(json.dumps({"version": 1, "incidents": {"fitted": "for the parent"}}))
    return dst


def test_the_cli_fine_tunes_reports_before_and_after_and_asks_for_a_new_incident_calibration(
    calibrated_parent, new_fleet_dir, tmp_path
):
    out = tmp_path / "child"
    args = ["train", "--from", str(calibrated_parent), "--data", str(new_fleet_dir), "--out", str(out)]
    quick = ["--set", "max_epochs=1", "--set", "limit_train_batches=2"]
    result = CliRunner().invoke(main, [*args, "--no-progress", *quick])
    assert result.exit_code == 0, result.output
    training = json.loads((out / "training.json").read_text())
    tune = training["fine_tune"]
    assert training["parent"]["sha256"] == weights_digest(calibrated_parent / "model.safetensors")
    assert f"fine-tuned parent (sha256 {training['parent']['sha256'][:12]})" in result.output
    assert f"parent {tune['val_loss_parent']:.4f} -> fine-tuned {tune['val_loss_fine_tuned']:.4f}" in result.output
    assert tune["parent_incident_calibration"] is True
    assert f"refit it (workbench calibrate-incidents --bundle {out})" in result.output
    stored = json.loads((out / "calibration.json").read_text()) if (out / "calibration.json").is_file() else {}
    assert "incidents" not in stored
    assert load_bundle(out, device="cpu").incidents is None

    again = CliRunner().invoke(main, [*args, "--no-progress"])
    assert again.exit_code == 1
    assert again.output == f"Error: output folder is not empty: {out} (pass --overwrite to replace it)\n"


def test_the_cli_refuses_what_fine_tuning_cannot_do_before_training(tiny_bundle_dir, tiny_fleet_dir, tmp_path):
    base = ["train", "--data", str(tiny_fleet_dir), "--no-progress"]
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, [*base, *args])

    not_bundle = run("--from", str(tiny_fleet_dir), "--out", str(tmp_path / "a"))
    assert not_bundle.exit_code == 1 and "Error: BundleError:" in not_bundle.output
    assert "not a model bundle, missing model.safetensors" in not_bundle.output
    same = run("--from", str(tiny_bundle_dir), "--out", str(tiny_bundle_dir))
    assert same.exit_code == 2 and "--out must differ from --from" in same.output
    preset = run("--from", str(tiny_bundle_dir), "--out", str(tmp_path / "b"), "--preset", "tiny")
    assert preset.exit_code == 2 and "--preset does not go with --from" in preset.output
    fixed = run("--from", str(tiny_bundle_dir), "--out", str(tmp_path / "c"), "--set", "hidden_size=16")
    assert fixed.exit_code == 1 and "Error: ConfigError: fine-tuning keeps the parent's network" in fixed.output
    alone = run("--out", str(tmp_path / "d"), "--overwrite")
    assert alone.exit_code == 2 and "--overwrite goes with --from" in alone.output
    short = tmp_path / "short.parquet"
    generate(3, 0.5, seed=1).write_parquet(short)
    too_short = runner.invoke(
        main, ["train", "--from", str(tiny_bundle_dir), "--data", str(short), "--out", str(tmp_path / "e")]
    )
    assert too_short.exit_code == 1 and "Error: ConfigError: training needs at least" in too_short.output
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_train_help_explains_from(tmp_path):
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    assert "--from BUNDLE" in result.output and "Fine-tune this bundle on DATA" in result.output
