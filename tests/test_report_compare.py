"""`workbench report compare`: the metrics.json of several report runs side by side, with deltas."""

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.errors import ConfigError
from workbench.reporting import ReportRun, compare_runs, flatten_metrics, load_run, render

FIRST = {
    "mase": {"tft": {"cpu_pct": 0.8, "mem_pct": 0.5}, "naive": 1.0},
    "coverage": [0.8, 0.9],
    "servers": 20,
    "zero": 0.0,
    "label": "text is skipped",
    "met": True,
    "none": None,
}
SECOND = {
    "mase": {"tft": {"cpu_pct": 0.9, "mem_pct": 0.5}, "naive": 1.0},
    "coverage": [0.7, 0.9, 0.95],
    "servers": 18,
    "zero": 0.5,
}
THIRD = {"mase": {"tft": {"cpu_pct": 0.6}, "naive": 1.0}, "extra": 3}


def make_run(
    reports: Path,
    stamp: str,
    metrics: dict | None,
    *,
    name: str = "03_evaluate",
    status: str = "ok",
    parameters: dict | None = None,
    html: bool = True,
) -> Path:
    folder = reports / name / stamp
    folder.mkdir(parents=True)
    files = {}
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
        files["metrics"] = "metrics.json"
    if html:
        (folder / f"{name}.html").write_text("<html></html>")
        files["html"] = f"{name}.html"
    started = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}+00:00"
    run = ReportRun(name, f"notebooks/{name}.ipynb", folder, started, parameters or {}, status=status, files=files)
    run.error = "cell 3: RuntimeError: boom" if status == "failed" else None
    run.save()
    return folder


@pytest.fixture
def reports(tmp_path) -> Path:
    """Three ok runs of 03_evaluate (oldest first), a newer failed one, and a run of another notebook."""
    root = tmp_path / "reports"
    make_run(root, "20261201T100000Z", FIRST, parameters={"data": "data/a", "bundle": "models/x"})
    make_run(root, "20261201T110000Z", SECOND, parameters={"data": "data/b", "bundle": "models/x", "seed": 1})
    make_run(root, "20261201T120000Z", THIRD, parameters={"data": "data/a", "bundle": "models/x"}, html=False)
    make_run(root, "20261201T130000Z", None, status="failed")
    make_run(root, "20261201T090000Z", {"rows": 10}, name="01_generate_data")
    return root


def run_cli(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def test_metrics_are_flattened_to_dotted_numeric_keys_in_file_order():
    flat = flatten_metrics(FIRST)
    assert flat == {
        "mase.tft.cpu_pct": 0.8,
        "mase.tft.mem_pct": 0.5,
        "mase.naive": 1.0,
        "coverage[0]": 0.8,
        "coverage[1]": 0.9,
        "servers": 20,
        "zero": 0.0,
    }
    nested = {"table": [{"name": "a", "value": 1.5, "met": False}, {"value": float("nan")}], "n": float("inf")}
    assert flatten_metrics(nested) == {"table[0].value": 1.5}


def test_rows_hold_each_runs_value_and_signed_deltas_against_the_first(reports):
    old, new = str(reports / "03_evaluate/20261201T100000Z"), str(reports / "03_evaluate/20261201T110000Z")
    comparison = compare_runs([old, new], reports)
    rows = {row.key: row for row in comparison.rows}
    assert list(rows)[:3] == ["mase.tft.cpu_pct", "mase.tft.mem_pct", "mase.naive"]
    cpu = rows["mase.tft.cpu_pct"]
    assert cpu.values == (0.8, 0.9)
    assert cpu.deltas[0] == pytest.approx(0.1) and cpu.relative[0] == pytest.approx(12.5)
    servers = rows["servers"]
    assert servers.deltas == [-2] and servers.relative[0] == pytest.approx(-10.0)
    assert rows["zero"].deltas == [0.5] and rows["zero"].relative == [None]  # no percent of zero
    assert rows["mase.naive"].deltas == [0.0] and not rows["mase.naive"].changed
    assert rows["coverage[2]"].values == (None, 0.95) and rows["coverage[2]"].deltas == [None]
    assert comparison.differing_parameters() == {"data": ["data/a", "data/b"], "seed": [None, 1]}


def test_keys_missing_from_some_runs_show_a_dash(reports):
    comparison = compare_runs(["03_evaluate@-3", "03_evaluate@-2", "03_evaluate"], reports)
    keys = [row.key for row in comparison.rows]
    assert keys[-2:] == ["coverage[2]", "extra"]  # the union, in first-seen order
    table = render(comparison, "table")
    line = next(line for line in table.splitlines() if line.startswith("extra "))
    assert line.split() == ["extra", "—", "—", "3", "—", "—"]
    mem = next(line for line in table.splitlines() if line.startswith("mase.tft.mem_pct"))
    assert mem.split() == ["mase.tft.mem_pct", "0.5", "0.5", "—", "0", "—"]
    cpu = next(line for line in table.splitlines() if line.startswith("mase.tft.cpu_pct"))
    assert "+0.1 (+12.5 %)" in cpu and "-0.2 (-25.0 %)" in cpu


def test_changed_hides_equal_rows_and_only_filters_keys(reports):
    specs = ["03_evaluate@-3", "03_evaluate@-2"]
    changed = [row.key for row in compare_runs(specs, reports, changed=True).rows]
    assert "mase.naive" not in changed and "mase.tft.mem_pct" not in changed and "coverage[1]" not in changed
    assert changed == ["mase.tft.cpu_pct", "coverage[0]", "servers", "zero", "coverage[2]"]
    only = [row.key for row in compare_runs(specs, reports, only=["tft"]).rows]
    assert only == ["mase.tft.cpu_pct", "mase.tft.mem_pct"]
    globbed = [row.key for row in compare_runs(specs, reports, only=["coverage[[]?]", "*naive"]).rows]
    assert globbed == ["mase.naive", "coverage[0]", "coverage[1]", "coverage[2]"]
    literal = [row.key for row in compare_runs(specs, reports, only=["coverage[1]"]).rows]
    assert literal == ["coverage[1]"]  # brackets match themselves as a substring


def test_names_resolve_to_the_newest_ok_runs(reports):
    assert load_run("03_evaluate", reports).folder.name == "20261201T120000Z"  # the failed one is skipped
    assert load_run("03_evaluate@latest", reports).folder.name == "20261201T120000Z"
    assert load_run("evaluate@-1", reports).folder.name == "20261201T120000Z"
    assert load_run("03_evaluate@-2", reports).folder.name == "20261201T110000Z"
    by_file = load_run(str(reports / "03_evaluate/20261201T110000Z/metrics.json"), reports)
    assert by_file.folder.name == "20261201T110000Z" and by_file.parameters["seed"] == 1
    with pytest.raises(ConfigError, match=r"03_evaluate@-4.*3 ok run\(s\)"):
        load_run("03_evaluate@-4", reports)
    with pytest.raises(ConfigError, match="no runs of notebook 'nope'.*known: 01_generate_data, 03_evaluate"):
        load_run("nope@-2", reports)
    with pytest.raises(ConfigError, match="no such run folder or file"):
        load_run(str(reports / "03_evaluate/19990101T000000Z"), reports)


def test_failed_runs_and_runs_without_metrics_are_refused(reports):
    failed = str(reports / "03_evaluate/20261201T130000Z")
    with pytest.raises(ConfigError, match=f"run '{failed}'.* is failed, not ok: cell 3: RuntimeError: boom"):
        compare_runs(["03_evaluate", failed], reports)
    bare = make_run(reports, "20261201T140000Z", None, name="05_model_size")
    with pytest.raises(ConfigError, match="run '05_model_size'.* has no metrics.json"):
        compare_runs(["03_evaluate", "05_model_size"], reports)
    assert bare.is_dir()
    with pytest.raises(ConfigError, match="at least two runs"):
        compare_runs(["03_evaluate"], reports)


def test_html_is_a_standalone_page_linking_each_runs_report(reports, tmp_path):
    comparison = compare_runs(["03_evaluate@-3", "03_evaluate@-2", "03_evaluate"], reports)
    out = tmp_path / "out" / "compare.html"
    page = render(comparison, "html", out)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<table") == 3  # runs, parameters that differ, metrics
    assert 'href="../reports/03_evaluate/20261201T100000Z/03_evaluate.html"' in page
    assert 'href="../reports/03_evaluate/20261201T110000Z/03_evaluate.html"' in page
    assert "20261201T120000Z/03_evaluate.html" not in page  # that run has no HTML report
    assert "<td class='num up'>+0.1 (+12.5 %)</td>" in page
    assert "<td class='num down'>-2 (-10.0 %)</td>" in page
    assert "<code>seed</code>" in page and "<code>bundle</code>" not in page  # equal parameters are left out
    absolute = render(comparison, "html")
    assert (reports / "03_evaluate/20261201T100000Z/03_evaluate.html").resolve().as_uri() in absolute


def test_csv_keeps_full_precision(reports):
    text = render(compare_runs(["03_evaluate@-3", "03_evaluate@-2"], reports, only=["servers", "zero"]), "csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "key",
        "20261201T100000Z",
        "20261201T110000Z",
        "delta 20261201T110000Z",
        "delta_pct 20261201T110000Z",
    ]
    assert rows[1] == ["servers", "20", "18", "-2", "-10.0"]
    assert rows[2] == ["zero", "0.0", "0.5", "0.5", ""]


def test_cli_prints_a_table_with_the_parameters_that_differ(reports):
    result = run_cli("compare", "03_evaluate@-3", "03_evaluate@-2", "--reports-dir", str(reports), "--changed")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "runs:" and "2026-12-01T10:00:00+00:00" in lines[1]
    assert "parameters that differ:" in lines
    assert any(line.split() == ["data", '"data/a"', '"data/b"'] for line in lines)
    assert any(line.split() == ["seed", "—", "1"] for line in lines)
    assert not any(line.split()[:1] == ["bundle"] for line in lines)
    header = next(line for line in lines if line.startswith("key"))
    assert header.split() == ["key", "[1]", "[2]", "Δ", "[2]", "vs", "[1]"]
    assert any(line.split() == ["servers", "20", "18", "-2", "(-10.0", "%)"] for line in lines)
    assert not any(line.startswith("mase.naive") for line in lines)


def test_cli_writes_json_to_a_file(reports, tmp_path):
    out = tmp_path / "cmp" / "compare.json"
    args = ["compare", "03_evaluate@-2", "03_evaluate", "--reports-dir", str(reports), "--format", "json"]
    result = run_cli(*args, "--out", str(out), "--only", "mase")
    assert result.exit_code == 0, result.output
    assert f"-> {out}" in result.output
    data = json.loads(out.read_text())
    assert [run["spec"] for run in data["runs"]] == ["03_evaluate@-2", "03_evaluate"]
    assert data["runs"][0]["html"].endswith("03_evaluate.html") and data["runs"][1]["html"] is None
    assert data["differing_parameters"] == {"data": ["data/b", "data/a"], "seed": [1, None]}
    rows = {row["key"]: row for row in data["rows"]}
    assert rows["mase.tft.cpu_pct"]["values"] == [0.9, 0.6]
    assert rows["mase.tft.cpu_pct"]["delta"][0] == pytest.approx(-0.3)
    assert rows["mase.tft.mem_pct"] == {
        "key": "mase.tft.mem_pct",
        "values": [0.5, None],
        "delta": [None],
        "delta_pct": [None],
    }
    stdout = run_cli("compare", "03_evaluate@-2", "03_evaluate", "--reports-dir", str(reports), "--format", "json")
    assert stdout.exit_code == 0, stdout.output
    everything = json.loads(stdout.output)["rows"]
    assert len(everything) > len(data["rows"]) and all(row in everything for row in data["rows"])


def test_cli_errors_name_the_run(reports):
    failed = str(reports / "03_evaluate/20261201T130000Z")
    result = run_cli("compare", "03_evaluate", failed, "--reports-dir", str(reports))
    assert result.exit_code == 1 and "ConfigError" in result.output and failed in result.output
    result = run_cli("compare", "03_evaluate", "--reports-dir", str(reports))
    assert result.exit_code == 2 and "needs at least two RUNs, got 1" in result.output


def test_report_name_keeps_its_old_behaviour(tmp_path, reports):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    result = run_cli("missing", "--reports-dir", str(tmp_path / "new"), "--notebooks-dir", str(notebooks))
    assert result.exit_code == 1 and "notebook 'missing' is unknown" in result.output
    assert not (tmp_path / "new").exists()
    result = run_cli("03_evaluate", "extra")
    assert result.exit_code == 2 and "only 'report compare' takes RUN arguments" in result.output
    result = run_cli("03_evaluate", "--changed", "--format", "csv")
    assert result.exit_code == 2 and "--changed, --format: only for 'report compare'" in result.output
    result = run_cli("compare", "a", "b", "-p", "x", "1", "--reports-dir", str(reports))
    assert result.exit_code == 2 and "-p: only for running a notebook" in result.output


def test_help_explains_compare():
    result = run_cli("--help")
    assert result.exit_code == 0
    assert "Usage: main report [OPTIONS] NAME [RUN]..." in result.output
    assert "workbench report compare 03_evaluate@-2 03_evaluate" in result.output
    assert "--changed" in result.output and "--only TEXT" in result.output
