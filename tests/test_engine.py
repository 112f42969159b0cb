import numpy as np
import polars as pl
import pytest

from workbench import contract as c
from workbench.inference import SOURCE_TFT, SOURCE_WARMING_UP
from workbench.inference.engine import Engine
from workbench.inference.forecast import SOURCE_MISSING
from workbench.inference.reference import reference_forecast, scaled_difference
from workbench.model import load_bundle


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir):
    return load_bundle(tiny_bundle_dir, device="cpu")


@pytest.fixture(scope="module")
def mixed_fleet(tiny_fleet, bundle):
    """The tiny fleet plus servers with partial windows (between min and max encoder length)."""
    spec = bundle.spec
    partial = [
        tiny_fleet.filter(pl.col(c.SERVER) == src).tail(n).with_columns(pl.lit(name).alias(c.SERVER))
        for src, name, n in [
            ("ppdb001", "partial-db", spec.min_encoder_length + 3),
            ("ppweb001", "partial-web", spec.max_encoder_length - 5),
            ("ppml0001", "exactly-min", spec.min_encoder_length),
        ]
    ]
    return pl.concat([tiny_fleet, *partial])


@pytest.mark.parametrize("fast", [False, True], ids=["stock-network", "fused-network"])
def test_engine_equals_pytorch_forecastings_predict(bundle, mixed_fleet, fast):
    engine = Engine(bundle, fast=fast, batch_size=5)  # several batches with different padding
    engine.ingest(mixed_fleet)
    ours = engine.forecast()
    ref = reference_forecast(bundle, mixed_fleet)
    assert ours.servers == ref.servers and "partial-db" in ours.servers
    np.testing.assert_array_equal(ours.last_step, ref.last_step)
    np.testing.assert_allclose(ours.current, ref.current)
    assert ours.profiles == ref.profiles
    # In units of each window's standard deviation, the scale the network forecasts in.
    assert scaled_difference(ours, ref, mixed_fleet, bundle.spec.max_encoder_length).max() < 1e-4
    if not fast:  # the same modules on the same tensors: equal in metric units too
        assert np.abs(ours.quantiles - ref.quantiles).max() < 1e-4


def test_engine_fed_in_pieces_equals_one_batch(bundle, tiny_fleet):
    whole = Engine(bundle)
    whole.ingest(tiny_fleet)
    pieces = Engine(bundle)
    for part in tiny_fleet.sample(fraction=1.0, shuffle=True, seed=1).iter_slices(300):
        pieces.ingest(part)
    np.testing.assert_array_equal(pieces.forecast().quantiles, whole.forecast().quantiles)


def test_warm_up_boundary(bundle, tiny_fleet):
    need = bundle.spec.min_encoder_length
    engine = Engine(bundle)
    server = tiny_fleet.filter(pl.col(c.SERVER) == "ppdb001")
    engine.ingest(server.head(need - 1))
    result = engine.forecast()
    assert result.servers == [] and result.warming_up == {"ppdb001": need - 1}
    status = engine.warmup()
    assert status.ready == 0 and status.to_json()["progress_percent"] == pytest.approx(100 * (need - 1) / need, 0.01)
    assert result.to_json()["ppdb001"]["cpu_pct"]["source"] == SOURCE_WARMING_UP
    engine.ingest(server.slice(need - 1, 1))
    result = engine.forecast()
    assert result.servers == ["ppdb001"] and result.warming_up == {}
    assert result.to_json()["ppdb001"]["cpu_pct"]["source"] == SOURCE_TFT
    assert engine.warmup().to_json()["is_warmed_up"] is True


def test_an_unknown_server_is_forecast(bundle, tiny_fleet):
    engine = Engine(bundle)
    stranger = tiny_fleet.filter(pl.col(c.SERVER) == "ppetl001").with_columns(pl.lit("never-seen-01").alias(c.SERVER))
    engine.ingest(stranger)
    result = engine.forecast()
    assert result.servers == ["never-seen-01"] and result.quantiles.shape == (1, len(bundle.targets), 96, 3)


def test_a_target_never_reported_is_named_not_forecast(bundle, tiny_fleet):
    engine = Engine(bundle)
    engine.ingest(
        tiny_fleet.filter(pl.col(c.SERVER) == "ppgen001").with_columns(pl.lit(None, pl.Float64).alias("disk_pct"))
    )
    engine.ingest(tiny_fleet.filter(pl.col(c.SERVER) == "ppdb001"))
    result = engine.forecast()
    assert result.servers == ["ppdb001"] and result.missing == {"ppgen001": ["disk_pct"]}
    assert result.to_json()["ppgen001"]["mem_pct"] == {"source": SOURCE_MISSING, "missing": ["disk_pct"]}
