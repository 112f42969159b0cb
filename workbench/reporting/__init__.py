"""Rerunnable reports: notebooks executed by papermill into ``reports/``, with an index of every run.

The functions are imported on first use, so that the command line (which imports
:mod:`workbench.reporting.cli`) does not load papermill and nbconvert before it needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.reporting.compare import Comparison, compare_runs, flatten_metrics, load_run, render
    from workbench.reporting.html import export_html
    from workbench.reporting.index import read_runs, write_index
    from workbench.reporting.notebooks import Parameter, declared_parameters, find_notebook, parse_parameters
    from workbench.reporting.runner import ReportRun, run_report
    from workbench.reports import write_metrics

_WHERE = {
    "Comparison": "workbench.reporting.compare",
    "Parameter": "workbench.reporting.notebooks",
    "ReportRun": "workbench.reporting.runner",
    "compare_runs": "workbench.reporting.compare",
    "declared_parameters": "workbench.reporting.notebooks",
    "export_html": "workbench.reporting.html",
    "find_notebook": "workbench.reporting.notebooks",
    "flatten_metrics": "workbench.reporting.compare",
    "load_run": "workbench.reporting.compare",
    "parse_parameters": "workbench.reporting.notebooks",
    "read_runs": "workbench.reporting.index",
    "render": "workbench.reporting.compare",
    "run_report": "workbench.reporting.runner",
    "write_index": "workbench.reporting.index",
    "write_metrics": "workbench.reports",
}
__all__ = [
    "Comparison",
    "Parameter",
    "ReportRun",
    "compare_runs",
    "declared_parameters",
    "export_html",
    "find_notebook",
    "flatten_metrics",
    "load_run",
    "parse_parameters",
    "read_runs",
    "render",
    "run_report",
    "write_index",
    "write_metrics",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
