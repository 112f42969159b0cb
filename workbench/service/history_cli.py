"""``workbench history export``: a table of the daemon's history archive to parquet or CSV."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.errors import ConfigError
from workbench.service.archive_rows import KINDS

_FOLDER = click.Path(path_type=Path, file_okay=False)


@click.group("history", short_help="Export what a daemon archived (metrics, forecasts, alert transitions).")
def history() -> None:
    """Read the history archive that `workbench serve --history-dir DIR` writes, without a daemon.

    \b
    DIR/metrics/    the records the daemon accepted
    DIR/forecasts/  p10/p50/p90 at 30 min, 1 h, 2 h, 4 h and 8 h ahead, by origin
    DIR/alerts/     alert transitions: raised, escalated, deescalated, resolved
    each partitioned date=YYYY-MM-DD, readable by polars, Spark or DuckDB as hive parquet.
    """  # noqa: D301 (click's no-rewrap marker)


@history.command("export")
@click.option("--history-dir", "directory", type=_FOLDER, required=True, help="The daemon's --history-dir.")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="Which table.")
@click.option("--server", "servers", multiple=True, help="Only this server (repeatable; default: every server).")
@click.option("--start", help="First time, inclusive: ISO 8601 (UTC when naive) or epoch seconds [default: oldest].")
@click.option("--end", help="Last time, inclusive [default: newest].")
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
    help="Output file: .parquet or .csv (by its suffix).",
)  # fmt: skip
def export(directory: Path, kind: str, servers: tuple[str, ...], start: str | None, end: str | None, out: Path) -> None:
    """Write the rows of one table, oldest first, to OUT (rows still buffered by a running daemon are not on disk yet).

    \b
    Example:
      workbench history export --history-dir state/history --kind forecasts \\
          --server ppdb001 --start 2025-01-06T00:00Z --end 2025-01-06T12:00Z --out ppdb001.csv
    """  # noqa: D301
    from workbench.service.archive import Archive
    from workbench.service.archive_rows import write_table
    from workbench.service.history_api import parse_time

    if not directory.is_dir():
        raise click.ClickException(f"no history archive at {directory}: it is the daemon's --history-dir")
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise click.BadParameter(f"{out} must end in .parquet or .csv", param_hint="--out")
    try:
        first = parse_time("--start", start) if start is not None else None
        last = parse_time("--end", end) if end is not None else None
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    archive = Archive(directory)
    frame, _ = archive.query(kind, list(servers) or None, first, last)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(frame, out)
    click.echo(f"wrote {frame.height} {kind} rows to {out}")
