"""Rerunnable reports: notebooks executed by papermill into ``reports/``, with an index of every run."""

from workbench.reporting.index import read_runs, write_index
from workbench.reporting.notebooks import Parameter, declared_parameters, find_notebook, parse_parameters
from workbench.reporting.runner import ReportRun, export_html, run_report
from workbench.reports import write_metrics

__all__ = [
    "Parameter",
    "ReportRun",
    "declared_parameters",
    "export_html",
    "find_notebook",
    "parse_parameters",
    "read_runs",
    "run_report",
    "write_index",
    "write_metrics",
]
