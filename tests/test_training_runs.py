"""Whole training runs through the command line: DDP on two CPU processes, weighted and uniform sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.data import read_frame
from workbench.inference.engine import Engine
from workbench.model import load_bundle

WORKBENCH = [sys.executable, "-m", "workbench.cli"]


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fleet") / "data"
    args = ["generate", "--servers", "8", "--days", "2", "--seed", "3", "--scenario", "critical", "--out", str(out)]
    subprocess.run([*WORKBENCH, *args], check=True, capture_output=True)
    return out


def _train(data: Path, out: Path, *settings: str, timeout: int = 300) -> dict:
    args = ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--no-progress"]
    for setting in ("accelerator=cpu", "limit_train_batches=3", *settings):
        args += ["--set", setting]
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    done = subprocess.run([*WORKBENCH, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "training.json").read_text())


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_a_bundle_that_loads_and_forecasts(fleet_dir, tmp_path):
    training = _train(fleet_dir, tmp_path / "ddp", "devices=2", "strategy=ddp")
    assert training["distributed"]["strategy"] == "DDPStrategy"
    assert training["distributed"]["world_size"] == 2
    assert training["distributed"]["seed"] == 42
    assert training["sampler"]["batches_per_epoch_per_rank"] == 3
    bundle = load_bundle(tmp_path / "ddp", device="cpu")
    engine = Engine(bundle)
    engine.ingest(read_frame(fleet_dir))
    forecast = engine.forecast()
    assert len(forecast.servers) == 8 and forecast.quantiles.shape[1:] == (8, 96, 3)


@pytest.mark.slow
def test_weighted_and_uniform_runs_record_different_recipes(fleet_dir, tmp_path):
    uniform = _train(fleet_dir, tmp_path / "uniform")["sampler"]["weighting"]
    weighted = _train(fleet_dir, tmp_path / "weighted", "sampling=incidents", "incident_weight=4")["sampler"][
        "weighting"
    ]
    assert uniform == {"kind": "uniform"}
    assert weighted["kind"] == "incidents" and weighted["factor"] == 4.0
    assert weighted["incidents"] > 0 and 0 < weighted["windows_weighted"] < weighted["windows"]
    assert weighted["expected_share_of_draws"] > weighted["windows_weighted"] / weighted["windows"]
