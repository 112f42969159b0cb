"""Every notebook runs under papermill with tiny parameters and publishes its figures."""

import json
from pathlib import Path

import pytest

from workbench.data import read_incidents
from workbench.reporting import declared_parameters
from workbench.simulator import INCIDENT_TYPES

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
pytestmark = pytest.mark.slow


def run(name: str, tmp_path: Path, **parameters) -> dict:
    metrics = tmp_path / f"{name}.metrics.json"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(tmp_path / f"{name}.out.ipynb"),
        parameters={**parameters, "metrics_path": str(metrics)},
        cwd=str(tmp_path),
        progress_bar=False,
        kernel_name="python3",
    )
    return json.loads(metrics.read_text())


def test_generate_then_train_notebooks(tmp_path):
    generated = run(
        "01_generate_data", tmp_path, servers=7, days=2.0, seed=1, scenario="critical", out_dir="fleet", plot_servers=2
    )
    assert generated["rows"] == 7 * 2 * 288 and generated["servers"] == 7
    keys = {"rows", "servers", "days", "seconds", "rows_per_second", "scenario", "affected_servers", "incidents"}
    assert set(generated) == keys
    assert generated["scenario"] == "critical" and generated["affected_servers"] == 2
    assert set(generated["incidents"]) == set(INCIDENT_TYPES)
    assert sum(generated["incidents"].values()) == read_incidents(tmp_path / "fleet").height > 0

    trained = run("02_train", tmp_path, data_dir="fleet", bundle_dir="bundle", preset="tiny", targets="cpu_pct,mem_pct")
    assert set(trained) == {"epochs", "best_val_loss", "seconds", "servers", "targets", "forecast_servers"}
    assert trained["targets"] == ["cpu_pct", "mem_pct"] and trained["forecast_servers"] == 7
    assert (tmp_path / "bundle" / "model.safetensors").is_file()


def test_bad_notebook_parameter_fails_with_the_allowed_values(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="preset: allowed tiny, demo, reference"):
        run("02_train", tmp_path, data_dir="fleet", preset="huge")


@pytest.fixture(scope="module")
def critical_fleet_dir(tmp_path_factory) -> Path:
    """Six servers over two days under the ``critical`` scenario, with their incidents."""
    from workbench.data import write_parquet
    from workbench.simulator import make_fleet, simulate

    sim = simulate(make_fleet(6, seed=1), 2.0, scenario="critical")
    return write_parquet(sim.metrics, tmp_path_factory.mktemp("critical"), incidents=sim.incidents)


@pytest.mark.parametrize("split", ["bundle", "fleet"])
def test_evaluate_notebook_publishes_every_figure(tmp_path, tiny_bundle_dir, critical_fleet_dir, split):
    metrics = run(
        "03_evaluate",
        tmp_path,
        bundle=str(tiny_bundle_dir),
        data=str(critical_fleet_dir),
        split=split,
        out_dir="tables",
        test_days=0.6,
        test_servers=3,
        origin_stride=24,
        warning_stride=6,
        history_steps=300,
        max_servers=2,
        progress=False,
    )
    models = {"tft", "seasonal_naive", "last_value", "predict_linear"}
    for key in ("mase", "pinball", "coverage_p10_p90", "per_metric", "by_horizon", "pinball_raw_by_metric"):
        assert set(metrics[key]) == models, key
    assert metrics["mase_ratio_vs_seasonal_naive"] > 0
    assert all(0 <= v <= 1 for v in metrics["coverage_p10_p90"].values())
    assert set(metrics["early_warning"]) == {"band_edge", "predict_linear", "static"}
    assert metrics["alert_rule"] == "band_edge"  # the tiny bundle has no incident calibration
    for rule in metrics["early_warning"].values():
        keys = {"recall", "precision", "f1", "median_lead_minutes", "false_alarms_per_server_day"}
        assert keys <= set(rule)
    assert set(metrics["targets_met"]) == {"mase", "coverage", "recall_at_precision", "f1_vs_predict_linear"}
    assert all(isinstance(v, bool) for v in metrics["targets_met"].values())
    assert len(metrics["missed_targets"]) == list(metrics["targets_met"].values()).count(False)
    assert metrics["servers"] == 2 and metrics["origins"] >= 1
    assert (tmp_path / "tables" / "scores.csv").is_file()


def test_warmup_notebook_recommends_a_length(tmp_path, tiny_bundle_dir, critical_fleet_dir):
    metrics = run(
        "04_warmup_study",
        tmp_path,
        bundle=str(tiny_bundle_dir),
        data=str(critical_fleet_dir),
        lengths="6,12,24,288",
        origins=2,
        origin_stride=12,
        max_servers=2,
        test_days=0.6,
        test_servers=3,
        progress=False,
    )
    assert metrics["lengths"] == [6, 12, 24, 48]  # the tiny bundle reads at most 48 steps
    assert [p["history_steps"] for p in metrics["curve"]] == metrics["lengths"]
    assert all({"mase", "pinball", "scaled_pinball", "coverage"} <= set(p) for p in metrics["curve"])
    assert metrics["recommended_min_encoder_length"] in metrics["lengths"]
    assert metrics["bundle_min_encoder_length"] == 12 and metrics["origins"] == 2 and metrics["servers"] == 2


def test_model_size_notebook_measures_every_candidate_and_picks_one(tmp_path, critical_fleet_dir):
    metrics = run(
        "05_model_size",
        tmp_path,
        data=str(critical_fleet_dir),
        grid="h4-a1-l1,h8-a2-l1",
        preset="tiny",
        holdout_days=0.6,
        holdout_servers=2,
        origin_stride=24,
        engine_servers=10,
        progress=False,
    )
    rows = metrics["candidates"]
    assert [r["candidate"] for r in rows] == ["h4-a1-l1", "h8-a2-l1"]
    assert [r["hidden_size"] for r in rows] == [4, 8] and [r["attention_head_size"] for r in rows] == [1, 2]
    for row in rows:
        assert row["mase"] > 0 and row["mase_ratio"] > 0 and 0 <= row["coverage"] <= 1
        assert row["train_seconds"] > 0 and row["engine_ms"] > 0 and row["stopped_by"] == "max_epochs"
    assert rows[0]["parameters"] < rows[1]["parameters"]
    assert metrics["chosen"] in {"h4-a1-l1", "h8-a2-l1"} and metrics["held_out_servers"] == 2
    accurate = [r for r in rows if r["mase"] <= metrics["best_mase"] * (1 + metrics["tolerance"])]
    assert metrics["chosen"] == min(accurate, key=lambda r: (r["engine_ms"], r["train_seconds"]))["candidate"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("03_evaluate", {"bundle", "data", "out_dir", "test_days", "test_servers", "origin_stride", "max_servers"}),
        ("04_warmup_study", {"bundle", "data", "lengths", "origins", "max_servers", "tolerance", "seed"}),
    ],
)
def test_evaluation_notebooks_declare_their_parameters(name, expected):
    declared = set(declared_parameters(NOTEBOOKS / f"{name}.ipynb"))
    assert expected | {"seed", "metrics_path"} <= declared


def test_early_warning_notebook_scores_every_rule_and_the_probabilities(tmp_path, tiny_bundle_dir):
    import shutil

    from workbench.evaluation.warning_benchmark import calibrate
    from workbench.model.bundle import load_bundle, save_calibration

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle_dir)
    bundle = load_bundle(bundle_dir, device="cpu")
    bundle.incidents = calibrate(bundle, scale=0.1, warning_stride=3)
    save_calibration(bundle, bundle_dir)
    rates = bundle.incidents.record["healthy_server_rate"]
    assert 0 <= rates["30m"] <= rates["8h"] <= 1
    assert load_bundle(bundle_dir, device="cpu").incidents is not None
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    metrics = run(
        "06_early_warning",
        tmp_path,
        bundle=str(bundle_dir),
        compare_bundle=str(other),
        scale=0.1,
        warning_stride=3,
        progress=False,
    )
    assert [row["model"].split(" ")[0] for row in metrics["comparison"]] == [str(bundle_dir), str(other)]
    assert metrics["comparison"][0]["recall"] == metrics["critical"]["calibrated"]["recall"]
    assert set(metrics["critical"]) == {"calibrated", "band_edge", "predict_linear", "static"}
    assert set(metrics["healthy_false_alarms_per_server_day"]) == set(metrics["critical"])
    assert metrics["calibrated"] is True and 0 < metrics["threshold"] <= 1 and metrics["warning_stride"] == 3
    assert set(metrics["probability"]) == {f"{f}/{w}" for f in ("test-critical", "test-healthy") for w in ("30m", "8h")}
    for row in metrics["probability"].values():
        assert 0 <= row["brier"] <= 1 and (row["ece"] is None or 0 <= row["ece"] <= 1)
    assert len(metrics["targets"]) == 14 and all(isinstance(t["met"], bool) for t in metrics["targets"])
    assert {r["window"] for r in metrics["fleet_probability"]} == {"30m", "8h"}
    assert {r["rule"] for r in metrics["lead_by_type"]} <= set(metrics["critical"])


def test_real_data_notebook_scores_a_bundle_trained_on_bitbrains(tmp_path, tiny_fleet):
    import os

    from click.testing import CliRunner

    from workbench import contract
    from workbench.cli import main
    from workbench.data import read_frame
    from workbench.evaluation.real_data import zero_shot_gap
    from workbench.model import TrainConfig, save_bundle
    from workbench.model.train import train

    env = os.environ.get("WORKBENCH_REAL_DATA")
    root = Path(env) if env else NOTEBOOKS.parents[1] / "shared" / "data" / "real"
    if not (root / "bitbrains-rnd").is_dir():
        pytest.skip(f"real data not found at {root} (set WORKBENCH_REAL_DATA to the folder with bitbrains-rnd)")
    files = [str(root / "bitbrains-rnd" / m / f"{vm}.csv.gz") for m in ("2013-7", "2013-8") for vm in (1, 3, 5, 52)]
    runner = CliRunner()
    imported = runner.invoke(main, ["import", *files, "--format", "bitbrains", "--out", str(tmp_path / "bb")])
    assert imported.exit_code == 0, imported.output
    real_targets = "cpu_pct,mem_pct,disk_io_mb_s,net_in_mb_s,net_out_mb_s"
    args = ["train", "--data", str(tmp_path / "bb"), "--out", str(tmp_path / "real"), "--preset", "tiny"]
    args += ["--targets", real_targets, "--holdout-days", "2", "--holdout-servers", "3", "--no-progress"]
    trained = runner.invoke(main, args)
    assert trained.exit_code == 0, trained.output
    simulated = train(tiny_fleet, TrainConfig.preset("tiny", targets=("cpu_pct", "mem_pct")), progress=False)
    save_bundle(simulated, tmp_path / "zero_shot")
    lacking = zero_shot_gap(contract.METRIC_NAMES, read_frame(tmp_path / "bb"))
    assert lacking == ["disk_pct", "latency_ms", "error_rate"]  # an 8-metric simulator bundle cannot be scored

    metrics = run(
        "07_real_data",
        tmp_path,
        bundle=str(tmp_path / "real"),
        data=str(tmp_path / "bb"),
        zero_shot_bundle=str(tmp_path / "zero_shot"),
        origins=2,
        origin_stride=48,
        history_steps=700,
        busy_quantile=0.5,
        fan_servers=1,
        progress=False,
    )
    models = {"tft", "seasonal_naive", "last_value", "daily_median", "predict_linear", "mstl_ets"}
    assert metrics["servers"] == 3 and metrics["origins"] == 2 and metrics["targets"] == real_targets.split(",")
    assert metrics["busy_servers"] >= 1 and metrics["idle_servers"] >= 1
    assert metrics["busy_servers"] + metrics["idle_servers"] == 3 and len(metrics["holdout"]["busy"]) >= 1
    for group in ("all", "busy", "idle"):
        figures = metrics[group]
        assert set(figures["scores"]) == set(figures["per_metric"]) == models, group
        assert all(0 <= s["coverage"] <= 1 and s["mase"] > 0 for s in figures["scores"].values())
        assert set(figures["per_metric"]["tft"]) == set(metrics["targets"])
        assert figures["mase_ratio_vs_seasonal_naive"]["seasonal_naive"] == pytest.approx(1.0)
        assert set(figures["p50_variation"]) == models
    zero_shot = metrics["zero_shot"]
    assert zero_shot["scored"] is True and zero_shot["targets"] == ["cpu_pct", "mem_pct"]
    assert set(zero_shot["all"]["scores"]) == {"tft", "seasonal_naive"}
    names = ["mase_vs_seasonal_naive", "mase_vs_mstl_ets", "busy_mase_vs_seasonal_naive", "coverage"]
    assert [t["name"] for t in metrics["target_table"]] == names and set(metrics["targets_met"]) == set(names)
    assert all(isinstance(t["met"], bool) and t["value"] is not None for t in metrics["target_table"])
    assert len(metrics["missed_targets"]) == list(metrics["targets_met"].values()).count(False)
