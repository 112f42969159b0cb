"""Run a notebook through papermill into ``reports/<name>/<UTC time>/`` with an HTML export and its figures."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import papermill

from workbench.reporting.html import export_html
from workbench.reporting.index import RUN_FILE, write_index
from workbench.reporting.notebooks import declared_parameters, find_notebook, parse_parameters

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
# Parameters that receive the run folder when the notebook declares them and the caller leaves them out.
RUN_DIR_PARAMETERS = {"metrics_path": METRICS_FILE, "out_dir": ""}
# The kernel's own log (a loopback "running over TCP without encryption" warning at start, a
# "KeyboardInterrupt caught" at shutdown) is noise on the report's terminal; a cell's errors and a
# dead kernel still reach the run through the notebook client.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]
# papermill re-reads the parameters cell with a line regex that misses some declarations
# (``x: str = ""``) and then warns about parameters this module has already checked against the
# cell's syntax tree (workbench.reporting.notebooks); only those two messages are dropped.
_PAPERMILL_MISREADS = ("Passed unknown parameter", "Unable to parse line")


class _DropMisreads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PAPERMILL_MISREADS)


for _name in ("papermill", "papermill.translators"):  # a logger's filter sees only its own records
    logging.getLogger(_name).addFilter(_DropMisreads())


@dataclass
class ReportRun:
    """One execution of a notebook, as recorded in the run folder's ``run.json``.

    Attributes:
        name: The notebook's name (file stem, e.g. ``03_evaluate``).
        notebook: Path of the source notebook.
        folder: The run folder ``reports/<name>/<time>/``.
        started: Start time, UTC, ISO 8601.
        parameters: Values given with ``-p``, typed.
        injected: Values the runner filled in (the run folder for ``out_dir`` / ``metrics_path``).
        status: ``running``, ``ok``, ``failed`` or ``interrupted``.
        seconds: Wall-clock duration.
        error: Why the run failed, if it did.
        files: Files of the run folder by role (``notebook``, ``html``, ``metrics``), relative to it.
    """

    name: str
    notebook: str
    folder: Path
    started: str
    parameters: dict[str, Any]
    injected: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    seconds: float = 0.0
    error: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the notebook ran to the end."""
        return self.status == "ok"

    def save(self) -> Path:
        """Write the record as ``run.json`` in the run folder and return its path."""
        data = {k: v for k, v in asdict(self).items() if k != "folder"}
        path = self.folder / RUN_FILE
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return path


def run_report(
    name: str,
    parameters: Iterable[tuple[str, str]] = (),
    *,
    reports_dir: str | Path = "reports",
    notebooks_dir: str | Path = "notebooks",
    kernel_name: str = "python3",
    progress: bool = True,
    cwd: str | Path | None = None,
    with_code: bool = False,
) -> ReportRun:
    """Execute notebook ``name`` with ``parameters`` into a new run folder and refresh the index.

    The run folder holds the executed notebook, its HTML export (figures and tables, code hidden), the notebook's
    ``metrics.json`` and ``run.json``. A failed run keeps its partial notebook and is listed in
    ``reports/index.html`` as failed.

    Args:
        name: Notebook name, with or without its number prefix (``03_evaluate`` or ``evaluate``).
        parameters: ``(key, value)`` texts as given with ``-p``, parsed to the declared types.
        reports_dir: Root of the reports (``index.html`` lives here).
        notebooks_dir: Where the notebooks are.
        kernel_name: Jupyter kernel that executes the notebook.
        progress: Show papermill's progress bar.
        cwd: Working directory of the kernel (relative paths in parameters resolve from it);
            the current directory by default.
        with_code: Show the code cells in the HTML export (hidden by default).

    Returns:
        The run's record; ``status`` says whether it succeeded.

    Raises:
        ConfigError: for an unknown notebook, an undeclared parameter or a mistyped value
            (nothing is executed then).
    """
    source = find_notebook(name, notebooks_dir)
    declared = declared_parameters(source)
    values = parse_parameters(declared, parameters)
    folder = _new_run_folder(Path(reports_dir) / source.stem)
    injected = {
        key: str(folder / leaf) if leaf else str(folder)
        for key, leaf in RUN_DIR_PARAMETERS.items()
        if key in declared and key not in values
    }
    run = ReportRun(source.stem, str(source), folder, _now(), values, injected)
    run.save()
    output = folder / f"{source.stem}.ipynb"
    began, wall = time.perf_counter(), time.time()
    try:
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters={**values, **injected},
            kernel_name=kernel_name,
            progress_bar=progress,
            cwd=str(Path(cwd) if cwd is not None else Path.cwd()),
            extra_arguments=KERNEL_ARGUMENTS,
        )
        run.status = "ok"
    except KeyboardInterrupt:
        run.status, run.error = "interrupted", "interrupted by the user"
        raise
    except Exception as exc:  # any failure is recorded, the partial notebook kept
        run.status, run.error = "failed", _describe(exc)
    finally:
        run.seconds = round(time.perf_counter() - began, 2)
        _finish(run, output, {**values, **injected}, Path(reports_dir), wall, with_code)
    return run


def _finish(
    run: ReportRun, output: Path, values: dict[str, Any], reports_dir: Path, since: float, with_code: bool
) -> None:
    if output.is_file():
        run.files["notebook"] = output.name
        try:
            run.files["html"] = export_html(output, output.with_suffix(".html"), with_code=with_code).name
        except Exception as exc:  # an export failure must not hide the run's own outcome
            log.warning("HTML export of %s failed: %s", output, exc)
    metrics = _collect_metrics(run.folder, values, since)
    if metrics is not None:
        run.files["metrics"] = metrics.name
    run.save()
    write_index(reports_dir)


def _collect_metrics(folder: Path, values: dict[str, Any], since: float) -> Path | None:
    """Return the run folder's ``metrics.json``, copied in when the notebook wrote it elsewhere (after ``since``)."""
    target = folder / METRICS_FILE
    candidates = [target]
    if "metrics_path" in values:
        candidates.append(Path(str(values["metrics_path"])))
    if "out_dir" in values:
        candidates.append(Path(str(values["out_dir"])) / METRICS_FILE)
    for path in candidates:
        if path.is_file() and path.stat().st_mtime >= since - 1:
            if path.resolve() != target.resolve():
                shutil.copyfile(path, target)
            return target
    return None


def _new_run_folder(parent: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{parent}: no free run folder for {stamp}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe(exc: Exception) -> str:
    if isinstance(exc, papermill.PapermillExecutionError):
        return f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    return f"{type(exc).__name__}: {exc}"
