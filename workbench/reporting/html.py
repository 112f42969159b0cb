"""A report's HTML: prose, tables and figures of an executed notebook, readable offline.

nbconvert alone loses two kinds of output a report needs. Plotly figures are saved as
``application/vnd.plotly.v1+json``, which nbconvert cannot represent (the figure vanishes), and
progress bars are ipywidgets whose saved text is their first frame (``0%``); their final state
lives in the notebook's widget metadata, drawn by a script fetched from a CDN. Here each figure
becomes plotly's own HTML (plotly.js embedded once, so the file opens without a network) and
each progress bar the text and bar of its final state. Code cells are hidden unless asked.
"""

from __future__ import annotations

import copy
import html
from pathlib import Path
from typing import Any

import nbformat
from nbconvert import HTMLExporter

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
_PROGRESS_MODELS = {"FloatProgressModel", "IntProgressModel"}
# nbconvert's templates load require.js when online; the plotly.js of plotly.py 5 (which the
# dependency range admits) registers itself as an AMD module when it sees ``define`` and then never
# sets ``window.Plotly``, so the bundle is loaded with ``define`` hidden.
_HIDE_AMD = "<script>window.__wbDefine = window.define; window.define = undefined;</script>"
_SHOW_AMD = "<script>window.define = window.__wbDefine;</script>"
_PROGRESS_STYLE = (
    "<style>.wb-progress{font-family:monospace;white-space:pre;display:flex;gap:.6em;align-items:center}"
    ".wb-progress progress{width:14em}</style>"
)


def export_html(notebook: str | Path, out: str | Path, *, with_code: bool = False) -> Path:
    """Export an executed notebook as one standalone HTML file and return its path.

    Args:
        notebook: The executed ``.ipynb``.
        out: The HTML file to write.
        with_code: Show the code cells (hidden by default: a report shows prose, tables, figures).
    """
    nb = report_notebook(nbformat.read(str(notebook), as_version=4))
    exporter = HTMLExporter(exclude_input_prompt=True, exclude_output_prompt=True, exclude_input=not with_code)
    body, _ = exporter.from_notebook_node(nb)
    target = Path(out)
    target.write_text(body, encoding="utf-8")
    return target


def report_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return a copy of ``nb`` whose figures and progress bars are plain HTML (see the module doc)."""
    nb = copy.deepcopy(nb)
    widgets = nb.metadata.get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})
    plotly_js = [True]  # embed plotly.js with the first figure only
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                output["data"] = {"text/html": _figure_html(data[PLOTLY_MIME], plotly_js)}
            elif WIDGET_VIEW_MIME in data:
                drawn = _widget_html(data[WIDGET_VIEW_MIME].get("model_id", ""), widgets)
                if drawn is None:
                    continue  # a closed widget (e.g. a finished bar with leave=False) shows nothing
                output["data"] = {"text/html": drawn[0], "text/plain": drawn[1]}
            kept.append(output)
        cell["outputs"] = kept
    nb.metadata.pop("widgets", None)  # nothing left for the CDN widget manager to draw
    return nb


def count_figures(nb: nbformat.NotebookNode) -> int:
    """Return how many plotly figures an executed notebook holds (what its report must draw)."""
    return sum(
        PLOTLY_MIME in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def _figure_html(figure: dict[str, Any], plotly_js: list[bool]) -> str:
    import plotly.io as pio

    first = plotly_js[0]
    plotly_js[0] = False
    drawn = pio.to_html(figure, include_plotlyjs=first, full_html=False, config={"responsive": True})
    return _HIDE_AMD + drawn + _SHOW_AMD if first else drawn


def _widget_html(model_id: str, widgets: dict[str, Any]) -> tuple[str, str] | None:
    """Draw a saved widget's final state: a progress bar as text and bar, others as their text."""
    model = widgets.get(model_id)
    if model is None:
        return None
    state = model.get("state", {})
    children = [widgets.get(str(ref).removeprefix("IPY_MODEL_"), {}) for ref in state.get("children", [])]
    parts, bar = [], ""
    for child in children:
        child_state = child.get("state", {})
        if child.get("model_name") in _PROGRESS_MODELS:
            value, top = child_state.get("value") or 0, child_state.get("max") or 0
            bar = f'<progress value="{value}" max="{top}"></progress>'
        elif "value" in child_state:
            parts.append(html.unescape(str(child_state["value"])))
    if not parts and not bar:
        return None
    left, right = (parts[0], " ".join(parts[1:])) if parts else ("", "")
    text = " ".join(f"{left} {right}".replace("\u2007", " ").split())
    shown = f"<span>{html.escape(left)}</span>{bar}<span>{html.escape(right)}</span>"
    return f'{_PROGRESS_STYLE}<div class="wb-progress">{shown}</div>', text
