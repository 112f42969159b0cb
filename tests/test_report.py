"""`workbench report`: notebooks run by papermill into reports/<name>/<time>/ with an index of every run."""

import json
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner
from test_report_html import rendered

from workbench.cli import main
from workbench.errors import ConfigError
from workbench.reporting import Parameter, declared_parameters, find_notebook, parse_parameters, read_runs, write_index
from workbench.reporting.html import count_figures
from workbench.reporting.notebooks import parse_value

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

PROBE_PARAMETERS = """\
rate: float = 0.5  # a number
count: int = 2  # how many
loud: bool = False  # fail on purpose when true
label: str = "x"  # any text
out_dir: str = "elsewhere"  # the run folder
"""

PROBE_BODY = """\
import json, pathlib
if loud:
    raise RuntimeError("asked to fail")
pathlib.Path(out_dir, "metrics.json").write_text(json.dumps({"total": rate * count, "label": label}))
"""


@pytest.fixture
def probe_dir(tmp_path) -> Path:
    """A purpose-built notebook folder: 07_probe writes metrics.json into out_dir, or fails when asked."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PROBE_PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# probe"), params, nbformat.v4.new_code_cell(PROBE_BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nb, folder / "07_probe.ipynb")
    nbformat.write(nb, folder / "08_other.ipynb")
    return folder


def report(tmp_path: Path, notebooks: Path, *args: str):
    reports = tmp_path / "reports"
    base = ["report", *args, "--reports-dir", str(reports), "--notebooks-dir", str(notebooks), "--no-progress"]
    return CliRunner().invoke(main, base), reports


def test_notebooks_are_found_with_or_without_their_number(probe_dir):
    assert find_notebook("07_probe", probe_dir).name == "07_probe.ipynb"
    assert find_notebook("probe", probe_dir).name == "07_probe.ipynb"
    assert find_notebook("08_other.ipynb", probe_dir).name == "08_other.ipynb"
    with pytest.raises(ConfigError, match="notebook 'nope' is unknown .*available: 07_probe, 08_other"):
        find_notebook("nope", probe_dir)
    (probe_dir / "09_probe.ipynb").write_bytes((probe_dir / "07_probe.ipynb").read_bytes())
    with pytest.raises(ConfigError, match="notebook 'probe' is ambiguous"):
        find_notebook("probe", probe_dir)


def test_declared_parameters_carry_types_defaults_and_help(probe_dir):
    declared = declared_parameters(probe_dir / "07_probe.ipynb")
    assert list(declared) == ["rate", "count", "loud", "label", "out_dir"]
    assert declared["count"] == Parameter("count", "int", "2", "how many")
    assert str(declared["label"]) == 'label: str = "x"  # any text'


def test_values_are_parsed_to_the_declared_type(probe_dir):
    declared = declared_parameters(probe_dir / "07_probe.ipynb")
    pairs = [("rate", "1e-3"), ("count", "-4"), ("loud", "TRUE"), ("label", "12"), ("count", "5")]
    assert parse_parameters(declared, pairs) == {"rate": 0.001, "count": 5, "loud": True, "label": "12"}
    assert parse_value(Parameter("x", "bool", "True", ""), "no") is False
    assert parse_value(Parameter("x", "", "None", ""), "raw") == "raw"
    with pytest.raises(ConfigError, match=r"parameter count: expected int \(e.g. 12\), got '1.5'"):
        parse_parameters(declared, [("count", "1.5")])
    with pytest.raises(ConfigError, match="parameter loud: expected bool"):
        parse_parameters(declared, [("loud", "maybe")])
    with pytest.raises(ConfigError, match="parameter rate: expected float"):
        parse_parameters(declared, [("rate", "fast")])


def test_bad_parameters_are_refused_before_anything_runs(tmp_path, probe_dir):
    result, reports = report(tmp_path, probe_dir, "probe", "-p", "speed", "3")
    assert result.exit_code == 1
    assert "unknown parameter 'speed'" in result.output
    assert "count: int = 2  # how many" in result.output and "loud: bool = False" in result.output
    result, _ = report(tmp_path, probe_dir, "probe", "-p", "count", "two")
    assert result.exit_code == 1 and "expected int" in result.output
    result, _ = report(tmp_path, probe_dir, "missing")
    assert result.exit_code == 1 and "available: 07_probe, 08_other" in result.output
    assert not reports.exists()


def test_list_parameters_prints_the_parameters_cell(tmp_path, probe_dir):
    result, reports = report(tmp_path, probe_dir, "07_probe", "--list-parameters")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "rate: float = 0.5  # a number"
    assert not reports.exists()


def test_index_lists_runs_newest_first_and_escapes_what_it_shows(tmp_path):
    reports = tmp_path / "reports"
    for stamp, status in (("20250101T000000Z", "ok"), ("20250102T000000Z", "failed")):
        folder = reports / "07_probe" / stamp
        folder.mkdir(parents=True)
        record = {
            "name": "07_probe",
            "started": stamp,
            "status": status,
            "parameters": {"label": "<b>"},
            "files": {"html": "07_probe.html", "metrics": "metrics.json"},
            "error": "boom" if status == "failed" else None,
        }
        (folder / "run.json").write_text(json.dumps(record))
    (reports / "07_probe" / "broken").mkdir()
    (reports / "07_probe" / "broken" / "run.json").write_text("{")
    runs = read_runs(reports)
    assert [r["status"] for r in runs] == ["failed", "ok", "unreadable"]
    page = write_index(reports).read_text()
    assert "<b>" not in page and "&lt;b&gt;" in page
    assert page.index("20250102T000000Z") < page.index("20250101T000000Z")
    assert 'href="07_probe/20250101T000000Z/07_probe.html"' in page
    assert 'href="07_probe/20250101T000000Z/metrics.json"' in page
    assert "boom" in page and "unreadable" in page


@pytest.mark.slow
def test_a_run_and_a_failed_run_are_kept_and_indexed(tmp_path, probe_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, reports = report(tmp_path, probe_dir, "probe", "-p", "count", "3", "-p", "label", "run one")
    assert result.exit_code == 0, result.output
    (run,) = read_runs(reports)
    folder = reports / run["folder"]
    assert run["status"] == "ok" and run["parameters"] == {"count": 3, "label": "run one"}
    assert run["injected"] == {"out_dir": str(folder)}
    assert json.loads((folder / "metrics.json").read_text()) == {"total": 1.5, "label": "run one"}
    assert (folder / "07_probe.ipynb").is_file()
    html = (folder / "07_probe.html").read_text()
    assert "asked to fail" not in html and "In&nbsp;[" not in html  # a report: no code, no prompts

    result, _ = report(tmp_path, probe_dir, "07_probe", "-p", "loud", "true")
    assert result.exit_code == 1 and "failed" in result.output and "asked to fail" in result.output
    failed, ok = read_runs(reports)
    assert failed["status"] == "failed" and "RuntimeError" in failed["error"] and ok["status"] == "ok"
    assert set(failed["files"]) == {"notebook", "html"}  # partial notebook kept, no metrics
    page = (reports / "index.html").read_text()
    assert page.count("<tr><td>07_probe</td>") == 2 and "failed" in page
    assert f'href="{ok["folder"]}/metrics.json"' in page


@pytest.mark.slow
def test_generate_notebook_report_with_tiny_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["generate_data", "-p", "servers", "3", "-p", "days", "1.0", "-p", "plot_servers", "1"]
    result, reports = report(tmp_path, NOTEBOOKS, *args)
    assert result.exit_code == 0, result.output
    (run,) = read_runs(reports)
    folder = reports / run["folder"]
    assert run["name"] == "01_generate_data" and run["parameters"] == {"servers": 3, "days": 1.0, "plot_servers": 1}
    assert set(run["injected"]) == {"out_dir", "metrics_path"}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["rows"] == 3 * 288 and metrics["servers"] == 3
    assert "01_generate_data" in (reports / "index.html").read_text()
    executed = nbformat.read(str(folder / "01_generate_data.ipynb"), as_version=4)
    stderr = [o for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert stderr == [], "library warnings in the report: " + json.dumps(stderr)[:500]
    drawn = rendered(folder / "01_generate_data.html")  # what a reader sees: every figure drawn
    assert count_figures(executed) > 0 and drawn["figures"] == count_figures(executed) and drawn["errors"] == []


def _parameters_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    return "".join(tagged[0]["source"]) if tagged else ""


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_parameter_of_every_notebook_is_listed_and_settable(notebook):
    source = _parameters_cell(notebook)
    namespace: dict = {}
    exec(source, {}, namespace)  # the cell's own values: what the notebook really declares
    values = {k: v for k, v in namespace.items() if not k.startswith("__")}
    declared = declared_parameters(notebook)
    assert list(declared) == list(values)
    for name, value in values.items():
        parameter = declared[name]
        if isinstance(value, bool | int | float | str):
            assert parameter.type == type(value).__name__, parameter
        given = "true" if value is True else "false" if value is False else str(value)
        assert parse_parameters(declared, [(name, given)]) == {name: value}
    listed = CliRunner().invoke(main, ["report", str(notebook), "--list-parameters"])
    assert listed.exit_code == 0, listed.output
    assert [line.split(":")[0].split(" =")[0] for line in listed.output.splitlines()] == list(values)


def test_parameters_papermill_cannot_read_are_still_declared(probe_dir):
    notebook = probe_dir / "07_probe.ipynb"
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    cell["source"] = 'targets: str = ""  # comma-separated; empty = all\nplot_server = ""\nlimit: int = 3\n'
    notebook.write_text(json.dumps(nb))
    declared = declared_parameters(notebook)
    assert declared["targets"] == Parameter("targets", "str", '""', "comma-separated; empty = all")
    assert declared["plot_server"].type == "str" and declared["limit"].default == "3"
    assert parse_parameters(declared, [("targets", "cpu_pct,mem_pct")]) == {"targets": "cpu_pct,mem_pct"}
