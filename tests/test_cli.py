import json

import pytest
from click.testing import CliRunner

from workbench.cli import main


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
    assert again.exit_code == 1 and "already exists" in again.output
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
    payload = json.loads(as_json.output)["predictions"]
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
    path, _ = _mixed_fleet(tiny_fleet, tmp_path)
    result = runner.invoke(main, ["forecast", "--bundle", str(tiny_bundle_dir), "--data", str(path)])
    assert result.exit_code == 0, result.output
    notes = result.stderr.splitlines()
    everything_but = "workbench train --targets cpu_pct,mem_pct,disk_pct,disk_io_mb_s,net_in_mb_s,net_out_mb_s"
    assert notes[0] == (
        "not forecast, no value of latency_ms, error_rate (needed by the model) in their history: "
        f"1 server (ppdb001); train a model on the metrics they have: {everything_but}"
    )
    assert notes[1].startswith("not forecast, no value of disk_io_mb_s (needed by the model) in their history: ")
    assert "1 server (ppetl001)" in notes[1] and "--targets cpu_pct,mem_pct,disk_pct,net_in_mb_s," in notes[1]
    assert notes[2] == "not forecast yet, warming up (the model needs 12 steps): 1 server (ppml0001 has 5)"
    assert notes[3].startswith("note: profile generic inferred, no name prefix (ppml, ppdb,")
    assert notes[3].endswith("matched: 1 server (web-7); a profile column in the data sets another")
    assert result.output.index("not forecast") < result.output.index("p50_30m")  # notes before the table
    rows = [[cell.strip() for cell in line.strip("│ ").split("┆")] for line in result.stdout.splitlines()]
    sources = {row[0]: row[-1] for row in rows if len(row) > 2 and row[-1] in ("tft", "warming_up")}
    assert sources == {s: "tft" for s in ("ppcon01", "ppgen001", "pprisk001", "ppweb001", "web-7")} | {
        "ppml0001": "warming_up"
    }


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
