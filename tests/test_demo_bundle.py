"""The committed demo model still loads under the running contract and forecasts."""

from pathlib import Path

import pytest

from workbench.forecast import SOURCE_TFT
from workbench.inference.engine import Engine
from workbench.model import load_bundle

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


@pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="no committed demo bundle")
def test_committed_demo_bundle_loads_and_forecasts(tiny_fleet):
    bundle = load_bundle(DEMO, device="cpu")
    assert bundle.targets and bundle.training["epochs"] >= 1
    # `make demo-model` trains to convergence: early stopping, not the time bound, ended it.
    assert bundle.training["stopped_by"] == "early_stopping"
    assert bundle.calibration is not None
    engine = Engine(bundle)
    engine.ingest(tiny_fleet)
    result = engine.forecast()
    assert len(result.servers) == 8 and result.quantiles.shape[2:] == (96, 3)
    assert {m["source"] for s in result.to_json().values() for m in s.values()} == {SOURCE_TFT}
