"""The ``workbench`` command line: generate data, train a model, forecast a fleet."""

from __future__ import annotations

import errno
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from workbench import contract as c
from workbench.adapters.cli import import_command
from workbench.dashboard.launch import dashboard_command
from workbench.demo import demo_command
from workbench.drift_cli import drift_reference
from workbench.early_warning.cli import calibrate_incidents
from workbench.errors import WorkbenchError
from workbench.forecast_cli import emit
from workbench.forecast_cli import forecast as forecast_command
from workbench.reporting.cli import report as report_command
from workbench.service.cli import serve as serve_command
from workbench.service.cli import stream as stream_command
from workbench.service.forward_cli import forward as forward_command
from workbench.service.history_cli import history as history_command
from workbench.service.state_cli import state as state_command
from workbench.simulator.scenarios import SCENARIO_NAMES

if TYPE_CHECKING:
    from workbench.model.bundle import Bundle

_PATH = click.Path(path_type=Path)


def _exists_message(ctx: click.Context, exc: FileExistsError) -> str:
    """Say what exists and, when the command has the flag, that --overwrite replaces it."""
    what = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    name = ctx.invoked_subcommand
    command = ctx.command.get_command(ctx, name) if isinstance(ctx.command, click.Group) and name else None
    if command is not None and any(p.name == "overwrite" for p in command.params):
        what += " (pass --overwrite to replace it)"
    return what


class _Group(click.Group):
    """Turn the workbench's own errors into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WorkbenchError as exc:
            notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", []))
            raise click.ClickException(f"{type(exc).__name__}: {exc}{notes}") from exc
        except FileExistsError as exc:
            raise click.ClickException(_exists_message(ctx, exc)) from exc
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def main(verbose: bool) -> None:
    """Research workbench for predictive server monitoring.

    Forecasts every server of a fleet 8 hours ahead (96 steps of 5 minutes) with a multi-target
    Temporal Fusion Transformer. Typical flow:

    \b
      workbench generate --servers 20 --days 7 --out data/fleet
      workbench train --data data/fleet --out models/fleet
      workbench forecast --bundle models/fleet --data data/fleet
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # Lightning logs hardware and tips at INFO through its own handler
        for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)


@main.command()
@click.option("--servers", type=click.IntRange(1, 100_000), default=20, show_default=True, help="Fleet size.")
@click.option("--days", type=click.FloatRange(min=1 / 288, max=3660), default=7.0, show_default=True, help="Days.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same data.")
@click.option(
    "--scenario",
    type=click.Choice(SCENARIO_NAMES),
    default="healthy",
    show_default=True,
    help="Incident rates and intensities: degrading and critical hit a seeded subset of servers harder.",
)
@click.option(
    "--start",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M"]),
    default="2025-01-06",
    show_default=True,
    help="First timestamp (UTC); rounded down to the 5-minute grid.",
)
@click.option("--out", type=_PATH, default=Path("data/fleet"), show_default=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace data already in OUT.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def generate(
    servers: int, days: float, seed: int, scenario: str, start: datetime, out: Path, overwrite: bool, progress: bool
) -> None:
    """Simulate a fleet and write contract-valid, date-partitioned parquet to OUT.

    The incidents' ground truth (server, type, precursor start, onset, peak, end) is written
    beside the metrics as OUT/incidents.parquet.
    """
    from workbench.data import write_incidents, write_parquet
    from workbench.simulator import BatchRun, incident_counts, make_fleet

    began = time.perf_counter()
    run = BatchRun(make_fleet(servers, seed), days, scenario=scenario, start=start.replace(tzinfo=UTC))
    path = write_parquet(run.frames(progress=progress), out, overwrite=overwrite)
    incidents = run.incidents()
    write_incidents(incidents, path)
    took = time.perf_counter() - began
    rows = servers * run.n_steps
    click.echo(f"wrote {rows:,} rows ({servers} servers x {days:g} days) to {path} in {took:.1f} s")
    listed = ", ".join(f"{kind} {n}" for kind, n in incident_counts(incidents).items())
    click.echo(f"{incidents.height} incidents ({scenario}, {len(run.affected)} servers affected): {listed}")


@main.command()
@click.option("--data", type=_PATH, required=True, help="Parquet folder or file (or CSV) of contract rows.")
@click.option("--out", type=_PATH, required=True, help="Bundle folder to write.")
@click.option(
    "--preset",
    type=click.Choice(["tiny", "demo", "reference", "real"]),
    default="reference",
    show_default=True,
    help="Starting settings: tiny (seconds, tests), demo (minutes), reference (the evaluated model), "
    "real (real fleets: each window's loss in its own scale).",
)
@click.option("--config", "config_file", type=_PATH, help="YAML file of settings applied over the preset.")
@click.option("--targets", help="Comma-separated metrics to forecast (default: all eight).")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="One setting, e.g. --set max_epochs=5 (repeatable)."
)
@click.option("--holdout-days", type=click.FloatRange(min=0, min_open=True), help="Leave out the last days for tests.")
@click.option("--holdout-servers", metavar="F", help="Leave out servers: a fraction in (0, 1) or a count (seeded).")
@click.option("--log-dir", type=_PATH, show_default="OUT/logs", help="Folder of the training logs (TensorBoard, CSV).")
@click.option(
    "--mlflow-uri",
    envvar="MLFLOW_TRACKING_URI",
    metavar="URI",
    help="Log the run to this MLflow tracking server as well (needs mlflow; env MLFLOW_TRACKING_URI).",
)
@click.option(
    "--mlflow-experiment",
    envvar="MLFLOW_EXPERIMENT_NAME",
    default="workbench",
    show_default=True,
    help="MLflow experiment of the run (env MLFLOW_EXPERIMENT_NAME).",
)
@click.option(
    "--from",
    "parent_dir",
    type=_PATH,
    metavar="BUNDLE",
    help="Fine-tune this bundle on DATA instead of training anew: its weights, inputs and settings, at "
    "0.1x its learning rate for at most 10 epochs (patience 2, 15 min); --set changes any setting but those "
    "of the network's shape and inputs. OUT/training.json names the parent.",
)
@click.option("--overwrite", is_flag=True, help="With --from: replace what OUT holds (training anew always does).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the training progress bar.")
def train(
    data: Path,
    out: Path,
    preset: str,
    config_file: Path | None,
    targets: str | None,
    overrides: tuple[str, ...],
    holdout_days: float | None,
    holdout_servers: str | None,
    log_dir: Path | None,
    mlflow_uri: str | None,
    mlflow_experiment: str,
    parent_dir: Path | None,
    overwrite: bool,
    progress: bool,
) -> None:
    """Train a multi-target TFT on DATA and save it as a safetensors + JSON bundle in OUT.

    The last 8 hours of every server are held out for early stopping. With --holdout-days and
    --holdout-servers, a test period and a profile-stratified set of test servers are left out
    and recorded in OUT/training.json for the evaluation. Settings are listed in
    ``workbench.model.TrainConfig``; any of them can be given with --set or in --config.
    The run is logged for TensorBoard in OUT/logs (``tensorboard --logdir OUT/logs``) and,
    with --mlflow-uri, to MLflow; OUT/training.json says where (``logs``).

    With --from, the bundle is fine-tuned on DATA instead (servers it never saw included), and
    the parent's and the child's losses on DATA's validation windows are compared: the child
    keeps the parent's weights unless its own are better.
    """
    from workbench.data import read_frame, read_incidents
    from workbench.model import TrainConfig, save_bundle
    from workbench.model.tracking import Tracking, is_main_process
    from workbench.model.train import train as fit

    settings: dict[str, Any] = dict(yaml.safe_load(config_file.read_text()) or {}) if config_file else {}
    if targets:
        settings["targets"] = [t.strip() for t in targets.split(",") if t.strip()]
    settings.update(_parse_overrides(overrides))
    if overwrite and parent_dir is None:
        raise click.UsageError("--overwrite goes with --from (training anew always writes over OUT)")
    parent = _parent_bundle(parent_dir, out, overwrite) if parent_dir is not None else None
    if parent is not None:
        from workbench.model.fine_tune import fine_tune_config

        config = fine_tune_config(parent.config, settings)
    else:
        config = TrainConfig.preset(preset, **settings)
    frame = read_frame(data)
    holdout = None
    if holdout_days is not None or holdout_servers is not None:
        from workbench.splits import make_holdout, parse_test_servers

        if holdout_days is None or holdout_servers is None:
            raise click.UsageError("--holdout-days and --holdout-servers go together")
        share = parse_test_servers(holdout_servers)
        holdout = make_holdout(frame, test_days=holdout_days, test_servers=share, seed=config.seed)
    incidents = read_incidents(data) if config.sampling == "incidents" else None
    tracking = Tracking.for_bundle(out, log_dir=log_dir, mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
    if parent is None:
        bundle = fit(frame, config, holdout=holdout, incidents=incidents, progress=progress, tracking=tracking)
    else:
        from workbench.model.fine_tune import fine_tune

        bundle = fine_tune(
            parent, frame, config, holdout=holdout, incidents=incidents, progress=progress, tracking=tracking
        )
    if not is_main_process():  # the other ranks of a distributed run leave the bundle to rank 0
        return
    path = save_bundle(bundle, out)
    t = bundle.training
    click.echo(
        f"saved bundle to {path}: {t['epochs']} epochs, best val_loss {t['best_val_loss']:.4f}, "
        f"{t['servers']} servers, {t['seconds']:.0f} s on {t['device']}, stopped by {t['stopped_by']}"
    )
    calibration = t.get("calibration", {})
    if "coverage_after" in calibration:
        before, after = calibration["coverage_before"], calibration["coverage_after"]
        click.echo(
            f"p10-p90 band calibrated on {calibration['windows']} validation windows: coverage {before} -> {after}"
        )
    if holdout is not None:
        click.echo(f"held out {len(holdout.test_servers)} servers and everything from {holdout.test_start.isoformat()}")
    logs = t.get("logs", {})
    if "view" in logs:
        click.echo(f"training logs: {logs['view']}")
    if "mlflow" in logs:
        click.echo(f"MLflow run {logs['mlflow']['run_id']} in {logs['mlflow']['tracking_uri']}")
    if parent is not None:
        _echo_fine_tune(t, path)


def _parent_bundle(parent_dir: Path, out: Path, overwrite: bool) -> Bundle:
    """Load the bundle to fine-tune, after checking that OUT may be written; refuse --preset and --targets."""
    from workbench.model import load_bundle

    ctx = click.get_current_context()
    for name in ("preset", "targets"):
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"--{name} does not go with --from: fine-tuning starts from the parent's settings")
    if out.resolve() == parent_dir.resolve():
        raise click.UsageError("--out must differ from --from: fine-tuning writes a new bundle beside its parent")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(errno.EEXIST, "output folder is not empty", str(out))
    # The parent's incident calibration is not read: it was fitted for the parent's weights.
    return load_bundle(parent_dir, device="cpu", incidents=False)


def _echo_fine_tune(training: dict[str, Any], path: Path) -> None:
    parent, tune = training["parent"], training["fine_tune"]
    before, after = tune["val_loss_parent"], tune["val_loss_fine_tuned"]
    click.echo(
        f"fine-tuned {parent['name']} (sha256 {parent['sha256'][:12]}) at learning rate {tune['learning_rate']:g} "
        f"for {tune['epochs']} epochs, stopped by {tune['stopped_by']}"
    )
    verdict = (
        "kept the fine-tuned weights"
        if tune["kept"] == "fine_tuned"
        else "fine-tuning did not help: kept the parent's weights"
    )
    click.echo(
        f"loss on the {tune['validation_windows']} new validation windows: parent {before:.4f} -> "
        f"fine-tuned {after:.4f} ({(after - before) / before:+.1%}); {verdict}"
    )
    command = f"workbench calibrate-incidents --bundle {path}"
    if tune["parent_incident_calibration"]:
        click.echo(f"the parent's incident calibration was fitted for its weights and not copied: refit it ({command})")
    else:
        click.echo(f"no incident calibration (the parent had none either): fit one with {command}")


def _parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


@main.command()
@click.option("--out", type=_PATH, help="Write the JSON here instead of stdout.")
def contract(out: Path | None) -> None:
    """Print the data contract (metrics, units, ranges, states, profiles) as JSON."""
    emit(json.dumps(c.contract_json(), indent=2), out)


main.add_command(forecast_command)
main.add_command(serve_command)
main.add_command(stream_command)
main.add_command(dashboard_command)
main.add_command(demo_command)
main.add_command(report_command)
main.add_command(calibrate_incidents)
main.add_command(drift_reference)
main.add_command(import_command)
main.add_command(forward_command)
main.add_command(state_command)
main.add_command(history_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
