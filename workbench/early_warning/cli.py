"""The ``workbench calibrate-incidents`` command (registered in :mod:`workbench.cli`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("calibrate-incidents", short_help="Fit a bundle's incident probabilities on seeded validation fleets.")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), required=True, help="Bundle folder.")
@click.option(
    "--scale",
    type=click.FloatRange(0.01, 1.0),
    default=1.0,
    show_default=True,
    help="Shrink the validation fleets (servers and days) for a quick try; 1 is the standard fit.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def calibrate_incidents(bundle_dir: Path, scale: float, progress: bool) -> None:
    """Learn P(incident within 30 min) and P(within 8 h) from simulated ground truth.

    \b
    Backtests the bundle at every step of two seeded validation fleets (critical and healthy
    scenarios, never the benchmark's fleets), fits a logistic score and isotonic maps per
    window, picks the calibrated alert rule's threshold for a validation precision of 0.7, and
    writes the result to BUNDLE/calibration.json (section "incidents"; JSON, no pickle).
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    from workbench.evaluation.warning_benchmark import calibrate
    from workbench.model.bundle import load_bundle, save_calibration

    bundle = load_bundle(bundle_dir, device="cpu", incidents=False)  # a stale section is refitted, not read
    bundle.incidents = calibrate(bundle, progress=progress, scale=scale)
    file = save_calibration(bundle, bundle_dir)
    alert = bundle.incidents.alert
    val = alert["validation"]
    click.echo(
        f"wrote {file}: alert when P(incident within {alert['window']}) >= {alert['threshold']:.3f} "
        f"(validation recall {_fmt(val['recall'])}, precision {_fmt(val['precision'])}, "
        f"median lead {_fmt(val['median_lead_minutes'], '.0f')} min)"
    )


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)
