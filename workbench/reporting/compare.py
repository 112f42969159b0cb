"""Put the ``metrics.json`` of several report runs side by side, with each run's change from the first.

A run is named by its folder (``reports/03_evaluate/20261201T163158Z``), the path of its
``metrics.json``, or ``NAME`` / ``NAME@latest`` / ``NAME@-2``: the newest / second-newest run of
notebook ``NAME`` that ran to the end. Every metrics file is flattened to dotted keys
(``mase.tft.cpu_pct``, list items as ``coverage[0]``) and only its numbers are compared.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from html import escape
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.reporting.index import RUN_FILE, read_runs

METRICS_FILE = "metrics.json"  # as in workbench.reporting.runner, which this module must not import (papermill)
FORMATS = ("table", "csv", "json", "html")
MISSING = "—"

_PREFIX = re.compile(r"^\d+_")
_REF = re.compile(r"^(?P<name>[^@]+)@(?P<ref>latest|-\d+)$")
_GLOB = re.compile(r"[*?\[]")
_NAME = re.compile(r"^[\w.-]+$")  # a notebook name, not a path

Number = int | float


@dataclass(frozen=True)
class RunMetrics:
    """One run's record and its numeric metrics.

    Attributes:
        spec: The run as it was named (``03_evaluate@-2``, a folder, a file).
        name: The notebook's name.
        started: Start time as recorded in ``run.json`` (empty when the run has none).
        folder: The run folder.
        metrics: Path of the run's ``metrics.json``.
        html: Path of the run's HTML report, when ``run.json`` lists one.
        parameters: The values the run was given with ``-p``.
        values: Numeric leaves of ``metrics.json`` by dotted key, in file order.
    """

    spec: str
    name: str
    started: str
    folder: Path
    metrics: Path
    html: Path | None
    parameters: dict[str, Any]
    values: dict[str, Number]

    @property
    def label(self) -> str:
        """A short column title: the run folder's name (its UTC start), after the notebook's name."""
        return f"{self.name}/{self.folder.name}"


@dataclass(frozen=True)
class Row:
    """One metric across the runs.

    Attributes:
        key: The dotted key.
        values: One value per run, ``None`` where a run lacks the key.
    """

    key: str
    values: tuple[Number | None, ...]

    @property
    def deltas(self) -> list[Number | None]:
        """Change of every later run from the first, ``None`` where either value is missing."""
        first = self.values[0]
        return [None if first is None or v is None else v - first for v in self.values[1:]]

    @property
    def relative(self) -> list[float | None]:
        """The deltas in percent of the first run's magnitude, ``None`` where the first is missing or zero."""
        first = self.values[0]
        return [None if d is None or not first else 100 * d / abs(first) for d in self.deltas]

    @property
    def changed(self) -> bool:
        """Whether the runs differ here (a value missing in some runs counts as a change)."""
        return len(set(self.values)) > 1


@dataclass(frozen=True)
class Comparison:
    """Runs side by side.

    Attributes:
        runs: The runs, the first being the one every delta refers to.
        rows: One row per key, in first-seen order.
    """

    runs: list[RunMetrics]
    rows: list[Row]

    def differing_parameters(self) -> dict[str, list[Any]]:
        """The ``-p`` parameters that are not the same in every run, each with one value per run (``None``: unset)."""
        keys = dict.fromkeys(k for run in self.runs for k in run.parameters)
        table = {k: [run.parameters.get(k) for run in self.runs] for k in keys}
        return {
            k: values
            for k, values in table.items()
            if any(k not in run.parameters for run in self.runs) or len({_canonical(v) for v in values}) > 1
        }


def flatten_metrics(data: Any, prefix: str = "") -> dict[str, Number]:
    """Return the numeric leaves of a parsed ``metrics.json`` by dotted key.

    Nested keys are joined with dots (``mase.tft.cpu_pct``), list items get their index
    (``coverage[0]``). Booleans, text, ``null`` and non-finite numbers are left out.
    """
    flat: dict[str, Number] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            flat.update(flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            flat.update(flatten_metrics(value, f"{prefix}[{i}]"))
    elif isinstance(data, int | float) and not isinstance(data, bool) and math.isfinite(data):
        flat[prefix] = data
    return flat


def compare_runs(
    specs: Sequence[str],
    reports_dir: str | Path = "reports",
    *,
    only: Iterable[str] = (),
    changed: bool = False,
) -> Comparison:
    """Load the runs named by ``specs`` and line their metrics up.

    Args:
        specs: At least two runs: run folders, ``metrics.json`` paths, or ``NAME[@latest|@-N]``.
        reports_dir: Where ``NAME`` runs are looked up.
        only: Keep the keys that contain one of these texts or match one of these globs.
        changed: Drop the rows whose value is the same in every run.

    Returns:
        The runs and one row per key of any run, in first-seen order.

    Raises:
        ConfigError: for fewer than two runs, or a run that is unknown, failed, or has no metrics.
    """
    if len(specs) < 2:
        raise ConfigError(f"compare needs at least two runs, got {len(specs)}")
    runs = [load_run(spec, reports_dir) for spec in specs]
    keys = dict.fromkeys(key for run in runs for key in run.values)
    patterns = list(only)
    rows = [
        Row(key, tuple(run.values.get(key) for run in runs))
        for key in keys
        if not patterns or any(_matches(key, pattern) for pattern in patterns)
    ]
    return Comparison(runs, [row for row in rows if row.changed] if changed else rows)


def load_run(spec: str, reports_dir: str | Path = "reports") -> RunMetrics:
    """Read the run named by ``spec``: a run folder, its ``metrics.json``, or ``NAME[@latest|@-N]``.

    Raises:
        ConfigError: when the run is unknown, did not finish ``ok``, or has no readable ``metrics.json``.
    """
    folder, metrics = _locate(spec, Path(reports_dir))
    record = _read_json(folder / RUN_FILE, spec) if (folder / RUN_FILE).is_file() else {}
    if not isinstance(record, dict):
        raise ConfigError(f"run {spec!r}: {folder / RUN_FILE} is not a JSON object")
    status = record.get("status", "ok")
    if status != "ok":
        why = f": {record['error']}" if record.get("error") else ""
        raise ConfigError(f"run {spec!r} ({folder}) is {status}, not ok{why}")
    files = record.get("files") or {}
    metrics = metrics or folder / str(files.get("metrics", METRICS_FILE))
    if not metrics.is_file():
        raise ConfigError(f"run {spec!r} ({folder}) has no {metrics.name}")
    html = folder / str(files["html"]) if files.get("html") else None
    return RunMetrics(
        spec=spec,
        name=str(record.get("name") or folder.parent.name),
        started=str(record.get("started", "")),
        folder=folder,
        metrics=metrics,
        html=html if html is not None and html.is_file() else None,
        parameters=dict(record.get("parameters") or {}),
        values=flatten_metrics(_read_json(metrics, spec)),
    )


def render(comparison: Comparison, fmt: str, out: Path | None = None) -> str:
    """Return the comparison as ``table``, ``csv``, ``json`` or ``html`` text.

    Args:
        comparison: What :func:`compare_runs` returned.
        fmt: One of :data:`FORMATS`.
        out: The file the text is for; the HTML links to the runs' reports relative to it
            (absolute ``file:`` links without it).
    """
    if fmt == "table":
        return format_table(comparison)
    if fmt == "csv":
        return format_csv(comparison)
    if fmt == "json":
        return format_json(comparison)
    if fmt == "html":
        return format_html(comparison, out)
    raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def format_table(comparison: Comparison) -> str:
    """Aligned text for the terminal: the runs, the parameters that differ, then a row per key."""
    runs, n = comparison.runs, len(comparison.runs)
    tags = [f"[{i}]" for i in range(1, n + 1)]
    lines = ["runs:"]
    lines += _align(
        [[f"  {tag}", run.name, run.started or MISSING, str(run.folder)] for tag, run in zip(tags, runs, strict=True)]
    )
    differing = comparison.differing_parameters()
    if differing:
        lines += ["", "parameters that differ:"]
        header = ["  parameter", *tags]
        body = [
            [f"  {key}", *(_show_parameter(v, key, run) for v, run in zip(values, runs, strict=True))]
            for key, values in differing.items()
        ]
        lines += _align([header, *body])
    lines.append("")
    if not comparison.rows:
        return "\n".join([*lines, "no numeric metrics to show"]) + "\n"
    header = ["key", *tags, *(f"Δ {tag} vs [1]" for tag in tags[1:])]
    body = [
        [
            row.key,
            *(_number(v) for v in row.values),
            *(_delta(d, r) for d, r in zip(row.deltas, row.relative, strict=True)),
        ]
        for row in comparison.rows
    ]
    lines += _align([header, *body], right=set(range(1, 2 * n)))
    return "\n".join(lines) + "\n"


def format_csv(comparison: Comparison) -> str:
    """CSV with full-precision numbers: ``key``, one column per run, then ``delta`` and ``delta_pct`` per later run."""
    labels = _labels(comparison.runs)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    later = labels[1:]
    writer.writerow(
        ["key", *labels, *(f"delta {label}" for label in later), *(f"delta_pct {label}" for label in later)]
    )
    for row in comparison.rows:
        writer.writerow([row.key, *map(_raw, row.values), *map(_raw, row.deltas), *map(_raw, row.relative)])
    return buffer.getvalue()


def format_json(comparison: Comparison) -> str:
    """JSON: the runs, the parameters that differ, and a row per key with values, deltas and relative deltas (%)."""
    labels = _labels(comparison.runs)
    data = {
        "runs": [
            {
                "label": label,
                "spec": run.spec,
                "name": run.name,
                "started": run.started,
                "folder": str(run.folder),
                "metrics": str(run.metrics),
                "html": str(run.html) if run.html else None,
                "parameters": run.parameters,
            }
            for label, run in zip(labels, comparison.runs, strict=True)
        ],
        "differing_parameters": comparison.differing_parameters(),
        "rows": [
            {"key": row.key, "values": list(row.values), "delta": row.deltas, "delta_pct": row.relative}
            for row in comparison.rows
        ],
    }
    return json.dumps(data, indent=2, default=str) + "\n"


def format_html(comparison: Comparison, out: Path | None = None) -> str:
    """A standalone page: the runs (linked to their HTML reports), the parameters that differ, and the table."""
    runs, labels = comparison.runs, _labels(comparison.runs)
    tags = [f"[{i}]" for i in range(1, len(runs) + 1)]
    run_rows = "\n".join(
        f"<tr><td>{tag}</td><td>{_link(run, escape(label), out)}</td><td>{escape(run.started or MISSING)}</td>"
        f"<td><code>{escape(str(run.folder))}</code></td></tr>"
        for tag, label, run in zip(tags, labels, runs, strict=True)
    )
    differing = comparison.differing_parameters()
    parameters = ""
    if differing:
        head = "".join(f"<th>{tag}</th>" for tag in tags)
        body = "\n".join(
            f"<tr><td><code>{escape(key)}</code></td>"
            + "".join(
                f"<td><code>{escape(_show_parameter(v, key, run))}</code></td>"
                for v, run in zip(values, runs, strict=True)
            )
            + "</tr>"
            for key, values in differing.items()
        )
        parameters = (
            f"<h2>Parameters that differ</h2>\n<table class='small'><thead><tr><th>parameter</th>{head}</tr></thead>"
            f"<tbody>\n{body}\n</tbody></table>"
        )
    head = "".join(f"<th class='num'>{_link(run, tag, out)}</th>" for tag, run in zip(tags, runs, strict=True))
    head += "".join(f"<th class='num'>Δ {tag} vs [1]</th>" for tag in tags[1:])
    body = "\n".join(_html_row(row) for row in comparison.rows) or (
        f"<tr><td colspan='{2 * len(runs)}'>no numeric metrics to show</td></tr>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Compared runs</title><style>{_STYLE}</style></head>
<body>
<h1>Compared runs</h1>
<table class="small"><thead><tr><th></th><th>run</th><th>started (UTC)</th><th>folder</th></tr></thead>
<tbody>
{run_rows}
</tbody></table>
{parameters}
<h2>Metrics</h2>
<p>{len(comparison.rows)} numeric metric(s); deltas are against [1].
<span class="up">Blue</span> is up, <span class="down">orange</span> down: the colour shows the direction,
not whether it is better.</p>
<table>
<thead><tr><th>key</th>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</body></html>
"""


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, td.key { font-family: ui-monospace, monospace; font-size: 0.9em; }
.up { color: #0550ae; } .down { color: #bc4c00; } .missing { color: #999; }
table.small { margin-bottom: 1.5em; }
"""


def _locate(spec: str, reports_dir: Path) -> tuple[Path, Path | None]:
    """The run folder of ``spec`` and, when ``spec`` names one, its metrics file."""
    path = Path(spec)
    if path.is_file():
        return (path.parent, None) if path.name == RUN_FILE else (path.parent, path)
    if path.is_dir() and ((path / RUN_FILE).is_file() or (path / METRICS_FILE).is_file()):
        return path, None
    if path.is_dir() and not _REF.match(spec) and not _NAME.match(spec):
        raise ConfigError(f"run {spec!r}: {path} is not a run folder (it has no {RUN_FILE} or {METRICS_FILE})")
    return _named_run(spec, reports_dir), None


def _named_run(spec: str, reports_dir: Path) -> Path:
    """The folder of run ``NAME``, ``NAME@latest`` or ``NAME@-N`` (the N-th newest ok run)."""
    match = _REF.match(spec)
    name, ref = (match["name"], match["ref"]) if match else (spec, "latest")
    if not _NAME.match(name):
        raise ConfigError(f"run {spec!r}: no such run folder or file, and not NAME, NAME@latest or NAME@-N")
    back = 1 if ref == "latest" else -int(ref)
    if back < 1:
        raise ConfigError(f"run {spec!r}: use NAME@-1 (newest), NAME@-2 (the one before), ...")
    runs = read_runs(reports_dir)
    known = sorted({str(r.get("name", "")) for r in runs})
    exact = [r for r in runs if r.get("name") == name]
    mine = exact or [r for r in runs if _PREFIX.sub("", str(r.get("name", ""))) == name]
    if not mine:
        raise ConfigError(
            f"run {spec!r}: no runs of notebook {name!r} in {reports_dir}; known: {', '.join(known) or 'none'}"
        )
    if len({r.get("name") for r in mine}) > 1:
        raise ConfigError(f"run {spec!r}: {name!r} is ambiguous: {', '.join(sorted({str(r['name']) for r in mine}))}")
    ok = [r for r in mine if r.get("status") == "ok"]
    if len(ok) < back:
        raise ConfigError(f"run {spec!r}: {mine[0]['name']} has {len(ok)} ok run(s) in {reports_dir}, not {back}")
    return reports_dir / str(ok[back - 1]["folder"])


def _read_json(path: Path, spec: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"run {spec!r}: cannot read {path}: {exc}") from exc


def _matches(key: str, pattern: str) -> bool:
    return pattern in key or (bool(_GLOB.search(pattern)) and fnmatchcase(key, pattern))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _labels(runs: Sequence[RunMetrics]) -> list[str]:
    """Column titles: the run folder's name, after the notebook's when the runs come from several notebooks."""
    several = len({run.name for run in runs}) > 1
    labels = [run.label if several else run.folder.name for run in runs]
    return [f"{label} ({i})" if labels.count(label) > 1 else label for i, label in enumerate(labels, 1)]


def _show_parameter(value: Any, key: str, run: RunMetrics) -> str:
    return json.dumps(value, default=str) if key in run.parameters else MISSING


def _number(value: Number | None) -> str:
    if value is None:
        return MISSING
    return str(value) if isinstance(value, int) and abs(value) < 10**7 else f"{value:.4g}"


def _delta(delta: Number | None, relative: float | None) -> str:
    if delta is None:
        return MISSING
    if delta == 0:
        return "0"
    shown = f"{delta:+d}" if isinstance(delta, int) and abs(delta) < 10**7 else f"{delta:+.4g}"
    return f"{shown} ({_percent(relative)})" if relative is not None else shown


def _percent(value: float) -> str:
    return f"{value:+.1f} %" if abs(value) >= 0.1 else f"{value:+.2g} %"


def _raw(value: Number | None) -> str:
    return "" if value is None else repr(value)


def _align(rows: list[list[str]], right: Collection[int] = ()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _link(run: RunMetrics, text: str, out: Path | None) -> str:
    if run.html is None:
        return text
    if out is None:
        href = run.html.resolve().as_uri()
    else:
        href = Path(os.path.relpath(run.html.resolve(), out.resolve().parent)).as_posix()
    return f'<a href="{escape(href)}">{text}</a>'


def _html_row(row: Row) -> str:
    cells = [f"<td class='key'>{escape(row.key)}</td>"]
    cells += [f"<td class='num{'' if v is not None else ' missing'}'>{_number(v)}</td>" for v in row.values]
    for delta, relative in zip(row.deltas, row.relative, strict=True):
        kind = "missing" if delta is None else "up" if delta > 0 else "down" if delta < 0 else ""
        cells.append(f"<td class='num {kind}'>{escape(_delta(delta, relative))}</td>")
    return "<tr>" + "".join(cells) + "</tr>"
