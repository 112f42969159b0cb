import copy

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from pytorch_forecasting.models.nn.rnn import LSTM
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
)

from workbench import contract as c
from workbench.inference import SOURCE_TFT, SOURCE_WARMING_UP
from workbench.inference.engine import Engine
from workbench.inference.forecast import SOURCE_MISSING
from workbench.inference.fused_vsn import FusedVariableSelection, elu, norm_columns
from workbench.inference.reference import reference_forecast, scaled_difference
from workbench.inference.speedups import FullLengthLSTM, FusedAttention, FusedGRN
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


# ---------------------------------------------------------------- fused modules vs the stock ones


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` in eval mode with every parameter random (stock inits zero the biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module.eval()


def test_fast_elu_and_column_norm_equal_the_stock_functions():
    x = torch.randn(64, 33) * 4
    np.testing.assert_allclose(elu(x), F.elu(x), atol=1e-6)
    norm = _randomised(torch.nn.LayerNorm(33))
    with torch.no_grad():
        expected = norm(x)
        np.testing.assert_allclose(norm_columns(x.T.clone(), norm).T, expected, atol=1e-5)


@pytest.mark.parametrize("context", ["per-server", "per-step", "none"])
def test_fused_grn_equals_the_stock_grn(context):
    grn = _randomised(GatedResidualNetwork(32, 32, 32, dropout=0.1, context_size=16))
    fused = FusedGRN(grn).eval()
    x = torch.randn(6, 20, 32)
    ctx = {
        "per-server": torch.randn(6, 1, 16).expand(-1, 20, -1),  # stride 0 over time, as the TFT passes it
        "per-step": torch.randn(6, 20, 16),
        "none": None,
    }[context]
    with torch.no_grad():
        np.testing.assert_allclose(fused(x, ctx), grn(x, ctx), atol=1e-5)
        residual = torch.randn(6, 20, 32)
        np.testing.assert_allclose(fused(x, ctx, residual), grn(x, ctx, residual), atol=1e-5)
    fused.train()  # dropout active: the stock module runs
    torch.manual_seed(1)
    ours = fused(x, ctx)
    torch.manual_seed(1)
    np.testing.assert_array_equal(ours.detach(), grn.train()(x, ctx).detach())


def test_fused_grn_applies_only_to_plain_grns():
    assert FusedGRN.applies(GatedResidualNetwork(32, 32, 32))
    assert not FusedGRN.applies(GatedResidualNetwork(8, 8, 32))  # resampled residual


@pytest.mark.parametrize("lengths", [[12, 12, 12, 12], [12, 5, 12, 1]], ids=["full", "unequal"])
def test_full_length_lstm_equals_the_stock_lstm(lengths):
    lstm = _randomised(LSTM(8, 16, batch_first=True))
    fast = FullLengthLSTM(lstm)
    x = torch.randn(4, 12, 8)
    hx = (torch.randn(1, 4, 16), torch.randn(1, 4, 16))
    lens = torch.tensor(lengths)
    with torch.no_grad():
        out, (h, c) = fast(x, hx, lengths=lens, enforce_sorted=False)
        ref, (h_ref, c_ref) = lstm(x, hx, lengths=lens, enforce_sorted=False)
    assert out.shape == ref.shape
    for ours, theirs in ((out, ref), (h, h_ref), (c, c_ref)):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def _causal_mask(encoder_lengths: torch.Tensor, encoder: int, decoder: int) -> torch.Tensor:
    """The TFT's mask (True = hidden): padded encoder steps, and decoder steps at or after the query."""
    padded = torch.arange(encoder)[None, :] >= encoder_lengths[:, None]  # (b, encoder)
    future = torch.arange(decoder)[None, :] >= torch.arange(decoder)[:, None]  # (decoder, decoder)
    b = len(encoder_lengths)
    return torch.cat([padded[:, None, :].expand(b, decoder, encoder), future.expand(b, decoder, decoder)], dim=-1)


@pytest.mark.parametrize("lengths", ["full", "unequal", "no-mask"])
def test_fused_attention_equals_the_stock_attention(lengths):
    attn = _randomised(InterpretableMultiHeadAttention(n_head=4, d_model=32, dropout=0.1))
    fused = FusedAttention(attn).eval()
    b, encoder, decoder = 7, 20, 6
    enc = torch.full((b,), encoder) if lengths == "full" else torch.tensor([20, 3, 20, 11, 1, 20, 19])
    mask = None if lengths == "no-mask" else _causal_mask(enc, encoder, decoder)
    k = torch.randn(b, encoder + decoder, 32)
    q = k[:, encoder:]
    with torch.no_grad():
        ours, _ = fused(q, k, k, mask)
        ref, _ = attn(q, k, k, mask)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    fused.train()  # dropout active: the stock module runs
    torch.manual_seed(2)
    ours = fused(q, k, k, mask)[0]
    torch.manual_seed(2)
    np.testing.assert_array_equal(ours.detach(), attn.train()(q, k, k, mask)[0].detach())


@pytest.mark.parametrize("calendar", ["same-for-all", "per-server"])
def test_fused_variable_selection_equals_the_stock_one(bundle, calendar):
    vsn = _randomised(copy.deepcopy(bundle.network.encoder_variable_selection))
    known = set(bundle.network.hparams.time_varying_reals_decoder)
    fused = FusedVariableSelection(vsn, shared=sorted(known)).eval()
    b, steps = 37, 24  # more servers than one chunk, the last chunk partial
    gen = torch.Generator().manual_seed(5)
    inputs = {}
    for name in vsn.input_sizes:
        if name in known and calendar == "same-for-all":
            inputs[name] = torch.randn(1, steps, 1, generator=gen).expand(b, -1, -1)
        else:
            inputs[name] = torch.randn(b, steps, 1, generator=gen)
    context = torch.randn(b, 1, vsn.context_size, generator=gen).expand(-1, steps, -1)
    with torch.no_grad():
        ours, ours_weights = fused(inputs, context)
        ref, ref_weights = vsn(inputs, context)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(ours_weights, ref_weights, atol=1e-6)
