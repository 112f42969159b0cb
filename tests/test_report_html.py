"""A report's HTML keeps its figures, tables and final progress bars, hides code unless asked, and has no warnings.

The figures are counted where they matter: drawn by headless Chromium, with a stand-in for the
require.js that nbconvert's page loads when online (plotly must still draw under it).
"""

from pathlib import Path

import nbformat
import pytest
from test_dashboard_e2e import CHROMIUM, CHROMIUM_ARGS, chromium_or_fail

from workbench.reporting import run_report
from workbench.reporting.html import (
    PLOTLY_MIME,
    WIDGET_STATE_MIME,
    WIDGET_VIEW_MIME,
    count_figures,
    export_html,
    report_notebook,
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FAKE_REQUIREJS = "window.define = function () {}; window.define.amd = {};"

PROBE_PARAMETERS = 'title: str = "probe"  # figure title\n'
PROBE_CELLS = [
    "import plotly.graph_objects as go\nimport polars as pl\nfrom tqdm.auto import tqdm",
    "for _ in tqdm(range(3), desc='steps'):\n    pass",
    "go.Figure(go.Scatter(y=[1, 3, 2]), layout_title_text=title).show()",
    "pl.DataFrame({'model': ['tft', 'naive'], 'mase': [0.7, 1.0]})",
    "fig = go.Figure(go.Bar(y=[2, 1]))\nfig.show()\nprint('MASE ratio 0.70')",
]


def rendered(html: Path) -> dict:
    """Open the report in Chromium and return what it drew."""
    from playwright.sync_api import sync_playwright

    chromium_or_fail()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.add_init_script(FAKE_REQUIREJS)
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        page.wait_for_timeout(500)
        drawn = {
            "figures": page.locator(".js-plotly-plot .main-svg").evaluate_all(
                "els => new Set(els.map(e => e.closest('.js-plotly-plot'))).size"
            ),
            "tables": page.locator("table").count(),
            "text": page.inner_text("body"),
            "errors": errors,
        }
        browser.close()
    return drawn


@pytest.fixture
def probe_dir(tmp_path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PROBE_PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Probe report"), params]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in PROBE_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nb, folder / "01_probe.ipynb")
    return folder


def test_figures_and_final_progress_bars_become_html():
    nb = nbformat.v4.new_notebook()
    bar_parts = {
        "a": ("HTMLModel", {"value": "fit:\u2007100%"}),
        "b": ("FloatProgressModel", {"value": 40.0, "max": 40.0}),
        "c": ("HTMLModel", {"value": "\u200740/40\u2007[00:02&lt;00:00]"}),
    }
    state = {k: {"model_name": name, "state": s} for k, (name, s) in bar_parts.items()}
    state["box"] = {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_a", "IPY_MODEL_b", "IPY_MODEL_c"]}}
    nb.metadata["widgets"] = {WIDGET_STATE_MIME: {"state": state}}
    figure = {"data": [{"type": "scatter", "y": [1, 2]}], "layout": {}}
    outputs = [
        nbformat.v4.new_output("display_data", {PLOTLY_MIME: figure}),
        nbformat.v4.new_output("display_data", {WIDGET_VIEW_MIME: {"model_id": "box"}, "text/plain": "fit: 0%"}),
        nbformat.v4.new_output("display_data", {WIDGET_VIEW_MIME: {"model_id": "closed"}, "text/plain": "0%"}),
        nbformat.v4.new_output("display_data", {PLOTLY_MIME: figure}),
    ]
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=outputs)]
    assert count_figures(nb) == 2
    out = report_notebook(nb)
    first, bar, second = out.cells[0].outputs  # the closed widget shows nothing, as in Jupyter
    assert "plotly.js" in first.data["text/html"] and "window.define = undefined" in first.data["text/html"]
    assert "plotly.js" not in second.data["text/html"] and len(second.data["text/html"]) < 10_000
    assert bar.data["text/plain"] == "fit: 100% 40/40 [00:02<00:00]"
    assert '<progress value="40.0" max="40.0">' in bar.data["text/html"]
    assert "widgets" not in out.metadata and count_figures(nb) == 2  # the input is left as it was


@pytest.mark.slow
def test_a_report_draws_every_figure_table_and_final_bar_without_code(tmp_path, probe_dir):
    reports = tmp_path / "reports"
    run = run_report("probe", reports_dir=reports, notebooks_dir=probe_dir, progress=False, cwd=tmp_path)
    assert run.ok, run.error
    executed = nbformat.read(str(run.folder / run.files["notebook"]), as_version=4)
    assert count_figures(executed) == 2
    drawn = rendered(run.folder / run.files["html"])
    assert drawn["errors"] == []
    assert drawn["figures"] == 2 and drawn["tables"] >= 1
    text = drawn["text"].replace("\u2007", " ")
    assert "Probe report" in text and "MASE ratio 0.70" in text and "tft" in text
    assert "steps: 100%" in text and "3/3" in text and "0/3" not in text
    assert "import plotly" not in text and "Warning" not in text

    with_code = export_html(run.folder / run.files["notebook"], tmp_path / "with_code.html", with_code=True)
    assert "import plotly" in rendered(with_code)["text"]
