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
