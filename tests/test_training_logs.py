"""Training logs: TensorBoard (and CSV) under the bundle's logs/, MLflow on request; training.json says where."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from workbench.cli import main
from workbench.model import load_bundle
from workbench.model import tracking as tracking_module
from workbench.model import train as train_module
from workbench.model.tracking import Tracking, mlflow_installed

EXPERIMENT = "workbench-tests"
# Lightning warnings a logged tiny run would print but must not.
UNWANTED = ("log_every_n_steps", "litmodels", "exists and is not empty", "hp_metric")


@pytest.fixture(scope="module")
def trained(tiny_fleet_dir, tmp_path_factory) -> tuple[Path, str | None, list[str]]:
    """One tiny training through the CLI into a bundle folder, logged to a local MLflow store when mlflow is there."""
    root = tmp_path_factory.mktemp("tracked")
    out = root / "tiny-run"
    args = ["train", "--data", str(tiny_fleet_dir), "--out", str(out), "--preset", "tiny", "--no-progress"]
    args += ["--set", "accelerator=cpu", "--set", "max_epochs=2"]
    env: dict[str, str | None] = {"MLFLOW_TRACKING_URI": None, "MLFLOW_EXPERIMENT_NAME": None}
    uri = None
    if mlflow_installed():
        uri = (root / "mlruns").as_uri()
        args += ["--mlflow-uri", uri, "--mlflow-experiment", EXPERIMENT]
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 keeps its file store only on request
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, uri, [str(w.message) for w in caught]


def _training(out: Path) -> dict:
    return json.loads((out / "training.json").read_text())


def test_tensorboard_logs_under_the_bundle_hold_the_losses_and_settings(trained):
    out, _, caught = trained
    training = _training(out)
    logs = training["logs"]
    assert logs["tensorboard"] == "logs/version_0" and logs["csv"] == "logs/version_0/metrics.csv"
    assert logs["view"] == f"tensorboard --logdir {out / 'logs'}"
    run = out / logs["tensorboard"]
    assert list(run.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val_loss", "train_loss_epoch", "best_val_loss", "best_epoch"} <= scalars
    val_loss = [e.value for e in events.Scalars("val_loss")]
    assert val_loss == pytest.approx(training["val_loss_history"], rel=1e-5)
    assert events.Scalars("best_val_loss")[-1].value == pytest.approx(training["best_val_loss"], rel=1e-5)
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["hidden_size"] == 8 and hparams["max_epochs"] == 2 and hparams["quantiles"] == "0.1,0.5,0.9"
    assert "val_loss" in (out / logs["csv"]).read_text().splitlines()[0]
    assert not [m for m in caught if any(u in m for u in UNWANTED)], caught
    bundle = load_bundle(out, device="cpu")  # the extra folder does not bother the loader
    assert bundle.training["logs"] == logs


def test_training_into_the_same_folder_again_logs_a_new_version(trained):
    out, _, _ = trained
    loggers = Tracking.for_bundle(out).loggers()  # writes nothing until a fit logs
    assert [type(lg) for lg in loggers] == [CSVLogger, TensorBoardLogger]
    assert {lg.version for lg in loggers} == {1}
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0"]


def test_mlflow_run_holds_the_settings_and_metrics(trained, monkeypatch):
    if not mlflow_installed():
        pytest.skip("mlflow is not installed (pip install mlflow-skinny)")
    from mlflow.tracking import MlflowClient

    out, uri, _ = trained
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    training = _training(out)
    record = training["logs"]["mlflow"]
    assert record["tracking_uri"] == uri and record["experiment"] == EXPERIMENT and record["run_name"] == "tiny-run"
    client = MlflowClient(uri)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-run"
    assert run.info.experiment_id == client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert run.data.params["hidden_size"] == "8" and run.data.params["max_epochs"] == "2"
    assert run.data.metrics["best_val_loss"] == pytest.approx(training["best_val_loss"], rel=1e-5)
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert history == pytest.approx(training["val_loss_history"], rel=1e-5)
    assert "train_loss_epoch" in run.data.metrics


def test_mlflow_uri_without_mlflow_fails_before_training(tiny_fleet_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking_module, "mlflow_installed", lambda: False)
    monkeypatch.setattr(train_module, "untrained_network", lambda *a: pytest.fail("training started"))
    out = tmp_path / "b"
    args = ["train", "--data", str(tiny_fleet_dir), "--out", str(out), "--preset", "tiny", "--no-progress"]
    for extra, env in (
        (["--mlflow-uri", "http://127.0.0.1:9"], {}),
        ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),  # as MLflow users set it
    ):
        result = CliRunner().invoke(main, [*args, *extra], env=env)
        assert result.exit_code == 1, result.output
        assert "ConfigError" in result.output and "pip install mlflow-skinny" in result.output
        assert not out.exists()


def test_train_command_passes_its_tracking(tiny_fleet_dir, tmp_path, monkeypatch):
    seen: list[Tracking] = []

    def fake_train(*args, tracking, **kwargs):
        seen.append(tracking)
        raise SystemExit(0)

    monkeypatch.setattr(train_module, "train", fake_train)
    out = tmp_path / "run-7"
    args = ["train", "--data", str(tiny_fleet_dir), "--out", str(out), "--preset", "tiny"]
    env = {"MLFLOW_TRACKING_URI": "http://env:5000", "MLFLOW_EXPERIMENT_NAME": "from-env"}
    CliRunner().invoke(main, [*args, "--mlflow-uri", "http://option:5000"], env=env)
    CliRunner().invoke(main, args, env=env)
    CliRunner().invoke(main, [*args, "--log-dir", str(tmp_path / "elsewhere")], env={"MLFLOW_TRACKING_URI": ""})
    option, from_env, plain = seen
    assert option == Tracking(out / "logs", out, "http://option:5000", "from-env", "run-7")
    assert from_env.mlflow_uri == "http://env:5000"
    assert plain == Tracking(tmp_path / "elsewhere", out, None, "workbench", "run-7")
