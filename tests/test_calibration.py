"""The band calibration widens or narrows each half of the p10–p90 band to what validation windows say."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.errors import BundleError
from workbench.model import load_bundle
from workbench.model.calibration import BandCalibration


def _forecasts(half_width: float, windows: int = 4000, seed: int = 0):
    rng = np.random.default_rng(seed)
    actual = rng.normal(size=(windows, 2, 24))
    quantiles = np.stack(
        [np.full_like(actual, -half_width), np.zeros_like(actual), np.full_like(actual, half_width)], -1
    )
    return quantiles, actual


@pytest.mark.parametrize("half_width", [0.5, 3.0])
def test_a_too_narrow_or_too_wide_band_is_rescaled_to_cover_80_percent(half_width):
    quantiles, actual = _forecasts(half_width)
    calibration = BandCalibration.fit(("a", "b"), quantiles, actual)
    z90 = 1.2816
    assert np.allclose(calibration.lower, z90 / half_width, rtol=0.06)
    assert np.allclose(calibration.upper, z90 / half_width, rtol=0.06)
    assert calibration.record["coverage_after"] == pytest.approx(0.8, abs=0.01)
    fresh_q, fresh_y = _forecasts(half_width, seed=1)
    calibrated = calibration.apply(fresh_q)
    inside = (fresh_y >= calibrated[..., 0]) & (fresh_y <= calibrated[..., 2])
    assert inside.mean() == pytest.approx(0.8, abs=0.015)
    assert np.array_equal(calibrated[..., 1], fresh_q[..., 1])


def test_calibration_round_trips_through_json_and_refuses_another_shape():
    quantiles, actual = _forecasts(1.0, windows=200)
    calibration = BandCalibration.fit(("a", "b"), quantiles, actual)
    data = json.loads(json.dumps(calibration.to_json()))
    again = BandCalibration.from_json(data, ("a", "b"), 24)
    assert np.allclose(again.lower, calibration.lower, atol=1e-6) and again.record == calibration.record
    with pytest.raises(BundleError, match="targets"):
        BandCalibration.from_json(data, ("a", "c"), 24)
    with pytest.raises(BundleError, match="x"):
        BandCalibration.from_json(data, ("a", "b"), 96)
    data["bands"]["lower"][0][0] = -1.0
    with pytest.raises(BundleError, match=">= 0"):
        BandCalibration.from_json(data, ("a", "b"), 24)


def test_a_bundle_trained_on_too_few_validation_windows_says_it_has_no_calibration(tiny_bundle_dir):
    bundle = load_bundle(tiny_bundle_dir, device="cpu")  # 8 servers: 8 validation windows at full length
    assert bundle.calibration is None
    assert bundle.training["calibration"] == {"skipped": "too few validation windows"}
    assert not (tiny_bundle_dir / "calibration.json").exists()


def test_the_engine_and_the_reference_path_apply_the_same_calibration(tiny_bundle_dir, tiny_fleet, tmp_path):
    from workbench.inference.engine import Engine
    from workbench.inference.reference import reference_forecast, scaled_difference
    from workbench.model import save_bundle

    bundle = load_bundle(tiny_bundle_dir, device="cpu")
    shape = (len(bundle.targets), bundle.spec.horizon)
    plain = Engine(bundle)
    plain.ingest(tiny_fleet)
    before = plain.forecast()
    bundle.calibration = BandCalibration(bundle.targets, np.full(shape, 1.5), np.full(shape, 0.5), {})
    reloaded = load_bundle(save_bundle(bundle, tmp_path / "calibrated"), device="cpu")
    engine = Engine(reloaded)
    engine.ingest(tiny_fleet)
    ours, ref = engine.forecast(), reference_forecast(reloaded, tiny_fleet)
    assert scaled_difference(ours, ref, tiny_fleet, bundle.spec.max_encoder_length).max() < 1e-4
    lower = before.quantiles[..., 1] - before.quantiles[..., 0]
    widened = ours.quantiles[..., 1] - ours.quantiles[..., 0]
    unclipped = ours.quantiles[..., 0] > 0
    assert np.allclose(widened[unclipped], 1.5 * lower[unclipped], rtol=1e-3, atol=1e-4)
