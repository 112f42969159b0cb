"""The ``workbench import`` command (registered in :mod:`workbench.cli`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from workbench import contract
from workbench.adapters.bitbrains import read_bitbrains
from workbench.adapters.generic import ColumnMap, make_mapping, read_generic
from workbench.adapters.nab import nab_windows, read_nab
from workbench.adapters.report import ImportResult
from workbench.adapters.tables import unescape_separator

_PATH = click.Path(path_type=Path)
_GENERIC_ONLY = ("mapping", "units", "sep", "time_column", "time_format", "server_column", "server", "profile")
REPORT_FILE = "import_report.json"
WINDOWS_FILE = "anomaly_windows.parquet"


@click.command("import", short_help="Bring real server metrics (Bitbrains, NAB, any CSV/parquet) into the contract.")
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True, type=_PATH)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bitbrains", "nab", "generic"]),
    required=True,
    help="bitbrains: month folder(s) of <N>.csv.gz; nab: NAB data folder (realAWSCloudwatch); "
    "generic: a CSV/parquet file or folder with --map.",
)
@click.option("--out", type=_PATH, required=True, help="Dataset folder to write (use it as --data for train/forecast).")
@click.option(
    "--clip/--no-clip",
    default=True,
    show_default=True,
    help="Clip out-of-range samples to the contract range, or set them to null; never refuse the file.",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="METRIC=COLUMN",
    help="generic: contract metric from a source column, e.g. cpu_pct='CPU [%]'; a+b sums columns (repeatable).",
)
@click.option(
    "--unit",
    "units",
    multiple=True,
    metavar="METRIC=UNIT",
    help="generic: source unit, e.g. net_in_mb_s=KB/s, cpu_pct=fraction, latency_ms=s, or a factor (repeatable).",
)
@click.option("--sep", help=r"generic: CSV separator, e.g. ';', '\t' or ';\t' (default: detected).")
@click.option("--time-column", help="generic: time column (default: timestamp/time/datetime/date/ts).")
@click.option("--time-format", help="generic: s, ms, us, ns (epoch) or a strftime format (default: detected).")
@click.option("--server-column", help="generic: column of server names.")
@click.option("--server", help="generic: one server name for all rows (default: the file name).")
@click.option("--profile", type=click.Choice(contract.PROFILES), help="generic: profile of every server [generic].")
@click.option("--limit-servers", type=click.IntRange(min=1), help="Import only this many servers (first ones).")
@click.option("--overwrite", is_flag=True, help="Replace data already in OUT.")
@click.option(
    "--report", "report_file", type=_PATH, help=f"Also write the report as JSON here (always: OUT/{REPORT_FILE})."
)
def import_command(
    sources: tuple[Path, ...],
    fmt: str,
    out: Path,
    clip: bool,
    mapping: tuple[str, ...],
    units: tuple[str, ...],
    sep: str | None,
    time_column: str | None,
    time_format: str | None,
    server_column: str | None,
    server: str | None,
    profile: str | None,
    limit_servers: int | None,
    overwrite: bool,
    report_file: Path | None,
) -> None:
    """Read real metrics from SOURCE and write a contract dataset to OUT.

    Every adapter applies the same policies and reports each count: samples floored to the
    5-minute grid (several in one step combined by mean/max), identical samples dropped,
    out-of-range samples clipped or nulled, leading rows without every metric trimmed, servers
    without usable data skipped and named. Metrics a source lacks are null columns (train them
    away with --targets); state is null (unknown). The report is also written to
    OUT/import_report.json; a NAB import writes its anomaly windows to OUT/anomaly_windows.parquet.

    \b
    Examples:
      workbench import real/bitbrains-rnd/2013-7 real/bitbrains-rnd/2013-8 --format bitbrains --out data/bb
      workbench import real/nab --format nab --out data/nab
      workbench import host.csv.gz --format generic --out data/host --map cpu_pct=cpu \\
        --map net_in_mb_s=rx --unit net_in_mb_s=KB/s --server web-1
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    from workbench.data import write_parquet

    given = _generic_options_given()
    if fmt != "generic" and given:
        raise click.UsageError(f"{', '.join(given)} apply to --format generic only")
    if fmt != "bitbrains" and len(sources) > 1:
        raise click.UsageError(f"--format {fmt} takes one SOURCE")
    columns = None
    if fmt == "generic":
        options = {"time_column": time_column, "time_format": time_format, "server": server, "profile": profile}
        columns = make_mapping(
            _pairs(mapping, "--map"), _pairs(units, "--unit"), server_column=server_column, **options
        )
    result = _run(fmt, sources, columns, sep, clip=clip, limit=limit_servers)
    if result.frame.height == 0:
        click.echo(result.report.summary())
        raise click.ClickException(f"nothing to write to {out}: no server has usable data (see the report above)")
    path = write_parquet(result.frame, out, overwrite=overwrite)
    report = result.report.to_json()
    (path / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    if report_file:
        report_file.write_text(json.dumps(report, indent=1) + "\n")
    for line in result.report.lines():
        click.echo(line)
    if fmt == "nab":
        _write_windows(sources[0], path)
    click.echo(f"wrote {result.frame.height:,} rows for {result.report.servers_out:,} servers to {path}")


def _run(
    fmt: str, sources: tuple[Path, ...], columns: ColumnMap | None, sep: str | None, *, clip: bool, limit: int | None
) -> ImportResult:
    if fmt == "bitbrains":
        return read_bitbrains(sources, clip=clip, limit_servers=limit)
    if fmt == "nab":
        return read_nab(sources[0], clip=clip, limit_servers=limit)
    assert columns is not None
    separator = unescape_separator(sep) if sep else None
    return read_generic(sources[0], columns, sep=separator, clip=clip, limit_servers=limit)


def _generic_options_given() -> list[str]:
    ctx = click.get_current_context()
    return [p.opts[0] for p in ctx.command.params if p.name in _GENERIC_ONLY and ctx.params.get(p.name)]


def _pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(f"expected METRIC=VALUE, got {item!r}", param_hint=option)
        pairs[key.strip()] = value.strip()
    return pairs


def _write_windows(source: Path, out: Path) -> None:
    try:
        windows = nab_windows(source)
    except FileNotFoundError as error:
        click.echo(f"no anomaly windows written: {error}")
        return
    windows.write_parquet(out / WINDOWS_FILE)
    click.echo(f"anomaly windows: {windows.height} written to {out / WINDOWS_FILE}")
