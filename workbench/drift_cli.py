"""The ``workbench drift-reference`` command (registered in :mod:`workbench.cli`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from workbench.drift import BANDS, DRIFT_FILE


@click.command("drift-reference", short_help="Write a bundle's drift reference (inputs and validation accuracy).")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), required=True, help="Bundle folder.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="The data the bundle was trained on.")
@click.option("--max-servers", type=click.IntRange(1), default=200, show_default=True, help="Servers replayed.")
@click.option("--max-steps", type=click.IntRange(1), default=864, show_default=True, help="Validation steps replayed.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def drift_reference(bundle_dir: Path, data: Path, max_servers: int, max_steps: int, progress: bool) -> None:
    """Fit what the daemon's drift check compares the live fleet with, and write BUNDLE/drift.json.

    \b
    Inputs: the 2-hour mean and spread of every metric in the training period, per profile.
    Accuracy: the bundle's validation period replayed step by step through the engine, each
    forecast scored as the daemon scores it live (pinball loss against a climatological band's,
    p10-p90 coverage, per metric and horizon band). A bundle without drift.json is judged on
    absolute limits and its inputs are not checked (GET /drift/status says so).
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    from workbench.data import read_frame
    from workbench.evaluation.drift_reference import fit_drift_reference
    from workbench.model.bundle import load_bundle

    bundle = load_bundle(bundle_dir, device="cpu", incidents=False)
    reference = fit_drift_reference(
        bundle, read_frame(data), max_servers=max_servers, max_steps=max_steps, progress=progress
    )
    file = bundle_dir / DRIFT_FILE
    file.write_text(json.dumps(reference.to_json(), indent=1) + "\n")
    click.echo(f"wrote {file}; validation accuracy (loss / climatology's, p10-p90 coverage), fleet mean over metrics:")
    for band in BANDS:
        per = [f for f in (reference.accuracy or {}).get(band, {}).values() if f["ratio"] is not None]
        if per:
            ratio = sum(f["ratio"] for f in per) / len(per)
            coverage = sum(f["coverage"] for f in per) / len(per)
            click.echo(f"  {band:>5}: {ratio:.2f}x, {coverage:.0%} covered ({len(per)} metrics)")
