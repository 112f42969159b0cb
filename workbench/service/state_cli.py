"""``workbench state check DIR`` and ``workbench state repair DIR`` (registered in :mod:`workbench.cli`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from workbench.errors import StateError

_PATH = click.Path(path_type=Path, file_okay=False)


@click.group("state", short_help="Check or repair a daemon's state folder (log segments and snapshots).")
def state() -> None:
    """Look at a `workbench serve` state folder without starting a daemon.

    \b
    check   says whether a start recovers the folder, and what it would skip or refuse
    repair  sets aside (into DIR/damaged/, never deleting) what makes a start refuse
    """  # noqa: D301 (click's no-rewrap marker)


@state.command("check")
@click.argument("directory", type=_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(directory: Path, as_json: bool) -> None:
    """Read every snapshot and log entry as a start would; exit 1 when a start would refuse."""
    from workbench.service.state_check import inspect

    try:
        report = inspect(directory)
    except StateError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.to_json(), indent=1) if as_json else "\n".join(report.lines()))
    sys.exit(0 if report.starts else 1)


@state.command("repair")
@click.argument("directory", type=_PATH)
def repair_command(directory: Path) -> None:
    """Make a refused folder startable: damaged files go to DIR/damaged/ with a ledger of what was given up."""
    from workbench.service.state_check import inspect, repair

    try:
        for line in repair(directory):
            click.echo(line)
        after = inspect(directory)
    except StateError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(after.lines()))
    sys.exit(0 if after.starts else 1)
