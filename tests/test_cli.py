import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from workbench import contract as c
from workbench.cli import main

DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "demo"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("command", ["generate", "train", "forecast", "contract"])
def test_every_command_explains_its_options(runner, command):
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage: main " + command in result.output or f"Usage: workbench {command}" in result.output
    assert "--help" in result.output


def test_contract_command_prints_the_contract(runner):
    result = runner.invoke(main, ["contract"])
    assert json.loads(result.output)["step_seconds"] == 300


def test_generate_writes_a_dataset_and_refuses_to_overwrite(runner, tmp_path):
    out = tmp_path / "fleet"
    args = ["generate", "--servers", "3", "--days", "0.5", "--seed", "1", "--out", str(out), "--no-progress"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 432 rows" in result.output
    again = runner.invoke(main, args)
    assert again.exit_code == 1
    assert again.output == f"Error: dataset already exists: {out / 'metrics'} (pass --overwrite to replace it)\n"
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_generate_validates_its_options(runner, tmp_path):
    result = runner.invoke(main, ["generate", "--servers", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "0 is not in the range 1<=x<=100000" in result.output
    scenario = runner.invoke(main, ["generate", "--scenario", "chaos", "--out", str(tmp_path)])
    assert scenario.exit_code == 2 and "'healthy', 'degrading', 'critical'" in scenario.output


def test_generate_writes_the_ground_truth_and_counts_incidents(runner, tmp_path):
    from workbench.data import read_frame, read_incidents

    out = tmp_path / "fleet"
    args = ["generate", "--servers", "10", "--days", "2", "--seed", "3", "--scenario", "critical", "--out", str(out)]
    result = runner.invoke(main, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    incidents = read_incidents(out)
    assert incidents.height > 0
    counts = dict(incidents.group_by("incident_type").len().iter_rows())
    line = result.output.splitlines()[-1]
    assert line.startswith(f"{incidents.height} incidents (critical, 3 servers affected): memory_leak ")
    assert all(f"{kind} {n}" in line for kind, n in counts.items())
    assert set(incidents["scenario"]) == {"critical"}
    assert read_frame(out).height == 10 * 2 * 288


def test_forecast_prints_a_table_json_and_csv(runner, tiny_bundle_dir, tiny_fleet_dir, tmp_path):
    base = ["forecast", "--bundle", str(tiny_bundle_dir), "--data", str(tiny_fleet_dir)]
    table = runner.invoke(main, [*base, "--head", "5"])
    assert table.exit_code == 0, table.output
    assert "p50_30m" in table.output and "p90_8h" in table.output and "tft" in table.output
    as_json = runner.invoke(main, [*base, "--format", "json", "--server", "ppdb001"])
    payload = json.loads(as_json.stdout)["predictions"]
    assert list(payload) == ["ppdb001"] and len(payload["ppdb001"]["cpu_pct"]["p90"]) == 96
    out = tmp_path / "f.csv"
    assert runner.invoke(main, [*base, "--format", "csv", "--out", str(out)]).exit_code == 0
    assert out.read_text().splitlines()[0] == "server_name,metric,step,timestamp,p10,p50,p90"
    slow = tmp_path / "r.csv"
    assert runner.invoke(main, [*base, "--format", "csv", "--out", str(slow), "--reference"]).exit_code == 0
    fast_rows, slow_rows = out.read_text().splitlines(), slow.read_text().splitlines()
    assert len(fast_rows) == len(slow_rows) == 1 + 8 * 8 * 96
    assert [r.split(",")[:4] for r in fast_rows] == [r.split(",")[:4] for r in slow_rows]


def test_forecast_errors_are_one_clear_line(runner, tiny_bundle_dir, tiny_fleet_dir, tmp_path):
    missing = runner.invoke(main, ["forecast", "--bundle", str(tmp_path), "--data", str(tiny_fleet_dir)])
    assert missing.exit_code == 1
    assert "BundleError" in missing.output and "missing model.safetensors" in missing.output
    unknown = runner.invoke(
        main, ["forecast", "--bundle", str(tiny_bundle_dir), "--data", str(tiny_fleet_dir), "--server", "nope"]
    )
    assert unknown.exit_code == 2 and "not in the data: nope" in unknown.output


def test_train_rejects_unknown_settings_and_bad_overrides(runner, tiny_fleet_dir, tmp_path):
    base = ["train", "--data", str(tiny_fleet_dir), "--out", str(tmp_path / "b"), "--preset", "tiny"]
    unknown = runner.invoke(main, [*base, "--set", "hiden_size=3"])
    assert unknown.exit_code == 1 and "unknown setting(s) ['hiden_size']" in unknown.output
    malformed = runner.invoke(main, [*base, "--set", "hidden_size"])
    assert malformed.exit_code == 2 and "expected KEY=VALUE" in malformed.output
    target = runner.invoke(main, [*base, "--targets", "cpu_pct,load"])
    assert target.exit_code == 1 and "unknown metric" in target.output


def test_train_writes_a_bundle(runner, tiny_fleet_dir, tmp_path):
    out = tmp_path / "b"
    args = ["train", "--data", str(tiny_fleet_dir), "--out", str(out), "--preset", "tiny", "--targets", "cpu_pct"]
    result = runner.invoke(main, [*args, "--no-progress", "--set", "max_epochs=1"])
    assert result.exit_code == 0, result.output
    assert "saved bundle" in result.output and (out / "model.safetensors").is_file()


def _mixed_fleet(tiny_fleet, tmp_path):
    """ppdb001 without latency and errors, ppetl001 without disk I/O, ppweb002 renamed web-7, ppml0001 short."""
    import polars as pl

    blank = {"ppdb001": ("latency_ms", "error_rate"), "ppetl001": ("disk_io_mb_s",)}
    frame = tiny_fleet.with_columns(
        *(
            pl.when(pl.col("server_name") == server).then(None).otherwise(pl.col(m)).alias(m)
            for server, metrics in blank.items()
            for m in metrics
        ),
        pl.col("server_name").replace({"ppweb002": "web-7"}),
    ).drop("profile")
    short = frame.filter(pl.col("server_name") == "ppml0001").tail(5)
    frame = pl.concat([frame.filter(pl.col("server_name") != "ppml0001"), short])
    path = tmp_path / "mixed.parquet"
    frame.write_parquet(path)
    return path, frame


def test_forecast_names_the_servers_it_could_not_forecast_and_why(runner, tiny_bundle_dir, tiny_fleet, tmp_path):
    path, frame = _mixed_fleet(tiny_fleet, tmp_path)
    result = runner.invoke(main, ["forecast", "--bundle", str(tiny_bundle_dir), "--data", str(path)])
    assert result.exit_code == 0, result.output
    notes = result.stderr.splitlines()
    assert notes[0] == f"read {frame.height:,} rows of 8 servers from {path}; loading {tiny_bundle_dir} …"
    everything_but = "workbench train --targets cpu_pct,mem_pct,disk_pct,disk_io_mb_s,net_in_mb_s,net_out_mb_s"
    assert notes[1] == (
        "not forecast, no value of latency_ms, error_rate (needed by the model) in their history: "
        f"1 server (ppdb001); train a model on the metrics they have: {everything_but}"
    )
    assert notes[2].startswith("not forecast, no value of disk_io_mb_s (needed by the model) in their history: ")
    assert "1 server (ppetl001)" in notes[2] and "--targets cpu_pct,mem_pct,disk_pct,net_in_mb_s," in notes[2]
    assert notes[3] == "not forecast yet, warming up (the model needs 12 steps): 1 server (ppml0001 has 5)"
    assert notes[4].startswith("note: profile generic inferred, no name prefix (ppml, ppdb,")
    assert notes[4].endswith("matched: 1 server (web-7); a profile column in the data sets another")
    assert result.output.index("not forecast") < result.output.index("p50_30m")  # notes before the table
    header, *rows = _table_rows(result.stdout)
    assert header[:3] == ["server_name", "status", "metric"] and header[-2:] == ["history", "ready_in"]
    statuses = [row[:2] for row in rows]
    forecast = ["ppcon01", "ppgen001", "pprisk001", "ppweb001", "web-7"]
    assert statuses == [[s, "forecast"] for s in forecast for _ in range(8)] + [  # ready ones first
        ["ppml0001", "warming up"],
        ["ppdb001", "missing metrics"],
        ["ppetl001", "missing metrics"],
    ]
    assert rows[-3][-2:] == ["5 of 12 steps", f"7 steps ({7 * c.STEP_SECONDS // 60} min)"]
    assert rows[-2][-1] == "when it reports latency_ms, error_rate" and rows[-1][-1] == "when it reports disk_io_mb_s"


def _table_rows(text: str) -> list[list[str]]:
    """The header and the rows of a printed polars table (its dtype and rule lines left out)."""
    rows = [[cell.strip() for cell in line.strip("│ ").split("┆")] for line in text.splitlines() if "┆" in line]
    return [row for row in rows if set(row[0]) != {"-"} and row[0] not in ("str", "f64")]


def test_forecast_fails_when_no_server_can_be_forecast(runner, tiny_bundle_dir, tiny_fleet, tmp_path):
    path, frame = _mixed_fleet(tiny_fleet, tmp_path)
    frame.drop("latency_ms").write_parquet(path)
    for fmt in ("table", "json"):
        result = runner.invoke(
            main, ["forecast", "--bundle", str(tiny_bundle_dir), "--data", str(path), "--format", fmt]
        )
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines[-1] == "Error: no server could be forecast (7 without metrics the model needs, 1 warming up)"
        assert lines[0].startswith(
            "not forecast, no value of latency_ms (needed by the model) in their history: "
            "5 servers (ppcon01, ppgen001, pprisk001, ppweb001, web-7); train a model on the metrics they have: "
        )
        assert (
            "no value of latency_ms, error_rate (needed by the model) in their history: 1 server (ppdb001)" in lines[1]
        )
        assert "not forecast yet, warming up (the model needs 12 steps): 1 server (ppml0001 has 5)" in lines


def _warming_fleet(tiny_fleet, tmp_path, steps=5):
    """Every server of the tiny fleet with only its first ``steps`` steps, as CSV."""
    path = tmp_path / "warming.csv"
    tiny_fleet.group_by(c.SERVER, maintain_order=True).head(steps).select(tiny_fleet.columns).write_csv(path)
    return path


def _run_workbench(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter; its last stderr line says whether torch was imported."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
        "from workbench.cli import main\n"
        "main(prog_name='workbench')\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_a_fleet_still_warming_up_is_answered_without_loading_the_model(tiny_bundle_dir, tiny_fleet, tmp_path):
    path = _warming_fleet(tiny_fleet, tmp_path)
    need = json.loads((tiny_bundle_dir / "dataset.json").read_text())["min_encoder_length"]
    result = _run_workbench("forecast", "--bundle", str(tiny_bundle_dir), "--data", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "torch imported: False"
    assert "loading" not in result.stderr
    assert f"not forecast yet, warming up (the model needs {need} steps): 8 servers" in result.stderr
    header, *rows = _table_rows(result.stdout)
    assert header == ["server_name", "status", "history", "ready_in"]
    left = need - 5
    expected = ["warming up", f"5 of {need} steps", f"{left} steps ({left * c.STEP_SECONDS // 60} min)"]
    assert rows == [[server, *expected] for server in sorted(tiny_fleet[c.SERVER].unique())]


def test_bad_data_or_bundle_fails_before_the_model_is_loaded(tiny_bundle_dir, tiny_fleet_dir, tmp_path):
    absent = _run_workbench("forecast", "--bundle", str(tiny_bundle_dir), "--data", str(tmp_path / "nope"))
    assert absent.returncode == 1 and "no such data file or folder" in absent.stderr
    assert absent.stderr.splitlines()[-1] == "torch imported: False"
    not_a_bundle = _run_workbench("forecast", "--bundle", str(tmp_path), "--data", str(tiny_fleet_dir))
    assert not_a_bundle.returncode == 1
    assert "BundleError" in not_a_bundle.stderr and "missing model.safetensors" in not_a_bundle.stderr
    assert not_a_bundle.stderr.splitlines()[-1] == "torch imported: False"


def test_the_manifest_read_without_torch_says_what_the_loaded_bundle_says(tiny_bundle_dir, tmp_path):
    from workbench.errors import BundleError
    from workbench.manifest import read_manifest
    from workbench.model import load_bundle

    manifest, bundle = read_manifest(tiny_bundle_dir), load_bundle(tiny_bundle_dir, device="cpu")
    assert manifest.targets == bundle.targets and manifest.horizon == bundle.spec.horizon
    assert (manifest.min_encoder_length, manifest.max_encoder_length) == (
        bundle.spec.min_encoder_length,
        bundle.spec.max_encoder_length,
    )
    with pytest.raises(BundleError, match="not a model bundle, missing model.safetensors") as by_manifest:
        read_manifest(tmp_path)
    with pytest.raises(BundleError) as by_loader:
        load_bundle(tmp_path)
    assert str(by_loader.value) == str(by_manifest.value)


@pytest.mark.skipif(not (DEMO_BUNDLE / "model.safetensors").is_file(), reason="no demo bundle")
def test_a_normal_forecast_prints_no_library_warnings_or_tips(tiny_fleet, tiny_fleet_dir):
    # the committed demo model (8 metrics) on a simulated fleet this test makes (data/demo may not exist)
    result = _run_workbench("forecast", "--bundle", str(DEMO_BUNDLE), "--data", str(tiny_fleet_dir), "--head", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    servers = tiny_fleet["server_name"].n_unique()
    assert lines == [
        f"read {tiny_fleet.height:,} rows of {servers} servers from {tiny_fleet_dir}; loading {DEMO_BUNDLE} …",
        "torch imported: True",
    ]
    assert "Warning" not in result.stderr and "Tip" not in result.stderr and "💡" not in result.stderr


def test_a_fleet_still_warming_up_in_every_format(runner, tiny_bundle_dir, tiny_fleet, tmp_path):
    path = _warming_fleet(tiny_fleet, tmp_path)
    base = ["forecast", "--bundle", str(tiny_bundle_dir), "--data", str(path)]
    as_csv = runner.invoke(main, [*base, "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.stdout == "server_name,metric,step,timestamp,p10,p50,p90\n"
    as_json = runner.invoke(main, [*base, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)["predictions"]
    assert len(payload) == 8
    assert payload["ppdb001"]["cpu_pct"] == {"source": "warming_up", "history_steps": 5, "needed_steps": 12}
    out = tmp_path / "f.parquet"
    as_parquet = runner.invoke(main, [*base, "--format", "parquet", "--out", str(out)])
    assert as_parquet.exit_code == 0, as_parquet.output
    frame = pl.read_parquet(out)
    assert frame.height == 0 and frame.schema == {
        "server_name": pl.String, "metric": pl.String, "step": pl.Int64,
        "timestamp": pl.Datetime("us", "UTC"), "p10": pl.Float64, "p50": pl.Float64, "p90": pl.Float64,
    }  # fmt: skip
    head = runner.invoke(main, [*base, "--head", "2"])
    assert head.exit_code == 0 and len(_table_rows(head.stdout)) == 1 + 2
    reference = runner.invoke(main, [*base, "--reference"])  # loads the model; same answer, same table
    assert reference.exit_code == 0, reference.output
    assert _table_rows(reference.stdout) == _table_rows(runner.invoke(main, base).stdout)


def test_a_fleet_warming_up_and_lacking_a_metric_still_fails(runner, tiny_bundle_dir, tiny_fleet, tmp_path):
    path = tmp_path / "lacking.csv"
    tiny_fleet.group_by(c.SERVER, maintain_order=True).head(5).select(tiny_fleet.columns).filter(
        pl.col(c.SERVER) != "ppdb001"
    ).vstack(
        tiny_fleet.filter(pl.col(c.SERVER) == "ppdb001").with_columns(pl.lit(None, pl.Float64).alias("cpu_pct"))
    ).write_csv(path)
    for fmt in ("table", "csv", "json"):
        result = runner.invoke(
            main, ["forecast", "--bundle", str(tiny_bundle_dir), "--data", str(path), "--format", fmt]
        )
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.splitlines()[-1] == (
            "Error: no server could be forecast (1 without metrics the model needs, 7 warming up)"
        )
