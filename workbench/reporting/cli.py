"""The ``workbench report`` command (registered in :mod:`workbench.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

_PATH = click.Path(path_type=Path)


@click.command("report", short_help="Run a notebook through papermill into reports/ (HTML + metrics.json).")
@click.argument("name")
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
def report(
    name: str,
    parameters: tuple[tuple[str, str], ...],
    reports_dir: Path,
    notebooks_dir: Path,
    kernel: str,
    list_parameters: bool,
    progress: bool,
) -> None:
    """Run notebook NAME (e.g. 03_evaluate or evaluate) into REPORTS_DIR/NAME/<UTC time>/.

    \b
    The run folder gets the executed notebook, an HTML export and the notebook's metrics.json;
    REPORTS_DIR/index.html lists every run. The run folder is passed to the notebook as
    out_dir and metrics_path when it declares them and -p leaves them out.
    Example: workbench report 03_evaluate -p bundle models/reference -p data data/reference
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
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
    )
    where = run.folder / run.files.get("html", run.files.get("notebook", ""))
    if not run.ok:
        raise click.ClickException(f"{run.name} {run.status} after {run.seconds:.0f} s: {run.error}\n  kept: {where}")
    click.echo(f"{run.name} ok in {run.seconds:.0f} s -> {where}")
    click.echo(f"index: {reports_dir / 'index.html'}")
