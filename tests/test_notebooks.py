"""Every notebook runs under papermill with tiny parameters and publishes its figures."""

import json
from pathlib import Path

import pytest

from workbench.data import read_incidents
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
