"""``reports/index.html``: every run of every notebook, newest first, rebuilt from the runs' ``run.json``."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
INDEX_FILE = "index.html"
_HEADER = "".join(f"<th>{h}</th>" for h in ("notebook", "started (UTC)", "parameters", "status", "seconds", "files"))

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
code { font-size: 0.9em; }
.ok { color: #1a7f37; } .failed, .interrupted { color: #cf222e; font-weight: bold; } .running { color: #9a6700; }
"""


def read_runs(reports_dir: str | Path) -> list[dict[str, Any]]:
    """Return every run recorded under ``reports_dir`` (``<name>/<time>/run.json``), newest first.

    Each record gains ``folder``: the run folder relative to ``reports_dir``. Unreadable records
    are listed as ``unreadable`` rather than dropped.
    """
    root = Path(reports_dir)
    runs = []
    for file in root.glob(f"*/*/{RUN_FILE}"):
        try:
            record = json.loads(file.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            record = {"name": file.parent.parent.name, "status": "unreadable", "error": str(exc)}
        record["folder"] = file.parent.relative_to(root).as_posix()
        runs.append(record)
    return sorted(runs, key=lambda r: (str(r.get("started", "")), r["folder"]), reverse=True)


def write_index(reports_dir: str | Path) -> Path:
    """Rebuild ``reports_dir/index.html`` from the recorded runs and return its path."""
    root = Path(reports_dir)
    root.mkdir(parents=True, exist_ok=True)
    runs = read_runs(root)
    rows = "\n".join(_row(run) for run in runs) or '<tr><td colspan="6">no runs yet</td></tr>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Workbench reports</title><style>{_STYLE}</style></head>
<body>
<h1>Workbench reports</h1>
<p>{len(runs)} run(s), newest first. Rerun one with <code>workbench report NAME -p KEY VALUE</code>.</p>
<table>
<thead><tr>{_HEADER}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body></html>
"""
    out = root / INDEX_FILE
    out.write_text(page, encoding="utf-8")
    return out


def _row(run: dict[str, Any]) -> str:
    params = {**(run.get("parameters") or {}), **(run.get("injected") or {})}
    shown = "<br>".join(f"<code>{escape(str(k))}={escape(json.dumps(v))}</code>" for k, v in params.items())
    status = escape(str(run.get("status", "unknown")))
    if run.get("error"):
        status += f"<br><small>{escape(str(run['error'])[:300])}</small>"
    files = run.get("files") or {}
    links = " · ".join(
        f'<a href="{escape(run["folder"])}/{escape(files[role])}">{label}</a>'
        for role, label in (("html", "HTML"), ("notebook", "notebook"), ("metrics", "metrics.json"))
        if role in files
    )
    cells = (
        escape(str(run.get("name", ""))),
        escape(str(run.get("started", ""))),
        shown or "defaults",
        f'<span class="{escape(str(run.get("status", "")))}">{status}</span>',
        escape(str(run.get("seconds", ""))),
        links or "none",
    )
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
