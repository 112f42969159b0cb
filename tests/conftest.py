"""Shared fixtures: tiny seeded fleets from the simulator and one tiny trained bundle per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest

from workbench.simulator import generate


@pytest.fixture(autouse=True)
def _quiet_library_warnings():
    # pytorch-forecasting and lightning warn about worker counts and hparams on every fit.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


@pytest.fixture(scope="session")
def tiny_fleet() -> pl.DataFrame:
    """Eight servers (every profile) over two days."""
    return generate(8, 2.0, seed=3)


@pytest.fixture(scope="session")
def tiny_fleet_dir(tiny_fleet, tmp_path_factory) -> Path:
    from workbench.data import write_parquet

    return write_parquet(tiny_fleet, tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="session")
def tiny_bundle_dir(tiny_fleet, tmp_path_factory) -> Path:
    """A bundle trained in seconds with the ``tiny`` preset, saved once per session."""
    from workbench.model import TrainConfig, save_bundle
    from workbench.model.train import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = train(tiny_fleet, TrainConfig.preset("tiny"), progress=False)
    return save_bundle(bundle, tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def steps():
    """5 simulated servers x 72 steps, one contract frame per step: the batches of the log and recovery tests."""
    from workbench import contract as c
    from workbench.simulator import generate

    frame = generate(5, 0.25, seed=2)
    return [part for _, part in frame.group_by(c.TIMESTAMP, maintain_order=True)]


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir):
    """The tiny bundle, loaded on the CPU once per test module (modules may define their own)."""
    from workbench.model import load_bundle

    return load_bundle(tiny_bundle_dir, device="cpu")


@pytest.fixture
def make(tmp_path, tiny_bundle_dir, bundle):
    """Build an in-process inference daemon on the tiny bundle: thread worker, state under tmp_path.

    Keyword arguments override :class:`~workbench.service.settings.InferenceSettings` fields.
    """
    from workbench.service.inference_app import create_app
    from workbench.service.settings import InferenceSettings

    def make(**overrides):
        options = {"state_dir": tmp_path / "state", "device": "cpu", "poll_seconds": 0.02, "forecast_worker": "thread"}
        options.update(overrides)
        return create_app(InferenceSettings(bundle=tiny_bundle_dir, **options), bundle=bundle)

    return make
