"""The ``workbench report`` command (registered in :mod:`workbench.cli`)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from workbench.reporting.compare import FORMATS, compare_runs, render

_PATH = click.Path(path_type=Path)
# Options of one mode that the other refuses, when given on the command line.
_RUN_ONLY = {
    "parameters": "-p",
    "kernel": "--kernel",
    "notebooks_dir": "--notebooks-dir",
    "list_parameters": "--list-parameters",
    "progress": "--progress/--no-progress",
    "with_code": "--with-code",
}
_COMPARE_ONLY = {"only": "--only", "changed": "--changed", "fmt": "--format", "out": "--out"}


@click.command("report", short_help="Run a notebook into reports/, or compare runs' metrics.")
@click.argument("name", metavar="NAME")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option(
    "-p",
    "--parameter",
    "parameters",
    nargs=2,
    multiple=True,
    metavar="KEY VALUE",
    help="A notebook parameter, parsed to its declared type (repeatable).",
)
@click.option("--reports-dir", type=_PATH, default=Path("reports"), show_default=True, help="Root of the reports.")
@click.option("--notebooks-dir", type=_PATH, default=Path("notebooks"), show_default=True, help="Notebook folder.")
@click.option("--kernel", default="python3", show_default=True, help="Jupyter kernel that runs the notebook.")
@click.option("--list-parameters", is_flag=True, help="Print the notebook's parameters and exit.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show papermill's progress bar.")
@click.option("--with-code", is_flag=True, help="Show the code cells in the HTML report (hidden by default).")
@click.option(
    "--only",
    multiple=True,
    metavar="TEXT",
    help="compare: keep the metrics whose key contains TEXT or matches it as a glob (repeatable).",
)
@click.option("--changed", is_flag=True, help="compare: hide the metrics that are equal in every run.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="compare: output format.",
)
@click.option("--out", type=_PATH, help="compare: write to this file instead of stdout.")
@click.pass_context
def report(
    ctx: click.Context,
    name: str,
    runs: tuple[str, ...],
    parameters: tuple[tuple[str, str], ...],
    reports_dir: Path,
    notebooks_dir: Path,
    kernel: str,
    list_parameters: bool,
    progress: bool,
    with_code: bool,
    only: tuple[str, ...],
    changed: bool,
    fmt: str,
    out: Path | None,
) -> None:
    """Run notebook NAME (e.g. 03_evaluate or evaluate) into REPORTS_DIR/NAME/<UTC time>/.

    \b
    The run folder gets the executed notebook, an HTML report (prose, tables and figures; the
    code with --with-code) and the notebook's metrics.json;
    REPORTS_DIR/index.html lists every run. The run folder is passed to the notebook as
    out_dir and metrics_path when it declares them and -p leaves them out.
    Example: workbench report 03_evaluate -p bundle models/reference -p data data/reference

    \b
    With NAME "compare", puts the metrics.json of two or more runs side by side, with each
    run's change from the first. A RUN is a run folder, its metrics.json, or NOTEBOOK,
    NOTEBOOK@latest, NOTEBOOK@-2 (newest, second-newest ok run in REPORTS_DIR).
    Keys are dotted (mase.tft.cpu_pct; list items as coverage[0]); only numbers are compared.
    Example: workbench report compare 03_evaluate@-2 03_evaluate --changed --only 'mase.*'
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    if name == "compare":
        _refuse(ctx, _RUN_ONLY, "running a notebook")
        _compare(runs, reports_dir, only, changed, fmt, out)
        return
    if runs:
        raise click.UsageError(f"unexpected argument(s) {' '.join(runs)}: only 'report compare' takes RUN arguments")
    _refuse(ctx, _COMPARE_ONLY, "'report compare'")

    from workbench.reporting.notebooks import declared_parameters, find_notebook
    from workbench.reporting.runner import run_report

    if list_parameters:
        for parameter in declared_parameters(find_notebook(name, notebooks_dir)).values():
            click.echo(str(parameter))
        return
    run = run_report(
        name,
        parameters,
        reports_dir=reports_dir,
        notebooks_dir=notebooks_dir,
        kernel_name=kernel,
        progress=progress,
        with_code=with_code,
    )
    where = run.folder / run.files.get("html", run.files.get("notebook", ""))
    if not run.ok:
        raise click.ClickException(f"{run.name} {run.status} after {run.seconds:.0f} s: {run.error}\n  kept: {where}")
    click.echo(f"{run.name} ok in {run.seconds:.0f} s -> {where}")
    click.echo(f"index: {reports_dir / 'index.html'}")


def _refuse(ctx: click.Context, options: dict[str, str], mode: str) -> None:
    """Refuse the options of the other mode that were given on the command line."""
    given = [flag for param, flag in options.items() if ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{', '.join(given)}: only for {mode}")


def _compare(
    runs: tuple[str, ...], reports_dir: Path, only: tuple[str, ...], changed: bool, fmt: str, out: Path | None
) -> None:
    if len(runs) < 2:
        raise click.UsageError(f"'report compare' needs at least two RUNs, got {len(runs)}")
    text = render(compare_runs(runs, reports_dir, only=only, changed=changed), fmt, out)
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    click.echo(f"compared {len(runs)} runs -> {out}")
