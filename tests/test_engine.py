import copy

import numba
import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from pytorch_forecasting.models.nn.rnn import LSTM
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GateAddNorm,
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
)

from workbench import contract as c
from workbench.forecast import SOURCE_MISSING, SOURCE_TFT, SOURCE_WARMING_UP, postprocess
from workbench.inference import fastmath, speedups, vsn_kernel
from workbench.inference.engine import Engine
from workbench.inference.fused_vsn import KERNEL_BLOCK, FusedVariableSelection, elu, norm_columns
from workbench.inference.reference import reference_forecast, scaled_difference
from workbench.inference.speedups import FullLengthLSTM, FusedAttention, FusedGateAddNorm, FusedGRN
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


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernel", "torch"])
@pytest.mark.parametrize("context", ["per-server", "per-step", "none"])
def test_fused_grn_equals_the_stock_grn(context, compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(speedups, "_compiled_applies", lambda *tensors: False)
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


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernel", "torch"])
def test_fused_gate_add_norm_equals_the_stock_block(compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(speedups, "_compiled_applies", lambda *tensors: False)
    block = _randomised(GateAddNorm(32, dropout=0.1))
    fused = FusedGateAddNorm(block).eval()
    x, skip = torch.randn(5, 17, 32), torch.randn(5, 17, 32)
    with torch.no_grad():
        np.testing.assert_allclose(fused(x, skip), block(x, skip), atol=1e-5)
        np.testing.assert_allclose(fused(x, skip[:, :1]), block(x, skip[:, :1]), atol=1e-5)  # a broadcast skip
    assert FusedGateAddNorm.applies(block)
    assert not FusedGateAddNorm.applies(GateAddNorm(32, trainable_add=True))
    assert not FusedGateAddNorm.applies(GateAddNorm(32, skip_size=16))


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


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernel", "torch"])
@pytest.mark.parametrize("lengths", ["full", "unequal", "no-mask"])
def test_fused_attention_equals_the_stock_attention(lengths, compiled):
    attn = _randomised(InterpretableMultiHeadAttention(n_head=4, d_model=32, dropout=0.1))
    fused = FusedAttention(attn, compiled=compiled).eval()
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


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernel", "torch"])
@pytest.mark.parametrize("calendar", ["same-for-all", "per-server"])
def test_fused_variable_selection_equals_the_stock_one(bundle, calendar, compiled):
    vsn = _randomised(copy.deepcopy(bundle.network.encoder_variable_selection))
    known = set(bundle.network.hparams.time_varying_reals_decoder)
    fused = FusedVariableSelection(vsn, shared=sorted(known), compiled=compiled).eval()
    # More servers than one chunk and more steps than one kernel block, the last ones partial.
    b, steps = 37, KERNEL_BLOCK + 5
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


def test_the_compiled_kernels_run_on_cpu_and_a_nan_input_stays_nan(bundle, monkeypatch):
    vsn = _randomised(copy.deepcopy(bundle.network.encoder_variable_selection))
    fused = FusedVariableSelection(vsn, shared=sorted(bundle.network.hparams.time_varying_reals_decoder)).eval()
    calls = []
    monkeypatch.setattr(vsn_kernel, "select", lambda *args: calls.append(args) or _real_select(*args))
    inputs = {name: torch.randn(3, 10, 1) for name in vsn.input_sizes}
    context = torch.randn(3, 1, vsn.context_size).expand(-1, 10, -1)
    with torch.no_grad():
        clean, _ = fused(inputs, context)
        assert len(calls) == 1 and torch.isfinite(clean).all()
        inputs[next(iter(inputs))][1, 4, 0] = float("nan")
        poisoned, _ = fused(inputs, context)
    assert len(calls) == 1, "a NaN input must not reach the fast-math kernel"
    assert torch.isnan(poisoned[1, 4]).all() and torch.isfinite(poisoned[0]).all()


_real_select = vsn_kernel.select


@numba.njit
def _apply(kind, x, out):
    for i in range(x.size):
        if kind == 0:
            out[i] = fastmath.exp(x[i])
        elif kind == 1:
            out[i] = fastmath.sigmoid(x[i])
        elif kind == 2:
            out[i] = fastmath.elu(x[i])
        else:
            out[i] = fastmath.tanh(x[i])


@pytest.mark.parametrize(
    ("kind", "reference", "rel"),
    [
        (0, np.exp, 5e-7),
        (1, lambda x: 1 / (1 + np.exp(-x)), None),
        (2, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), 5e-7),
        (3, np.tanh, 5e-7),
    ],
    ids=["exp", "sigmoid", "elu", "tanh"],
)
def test_kernel_math_is_within_a_few_float32_ulps(kind, reference, rel):
    """The vectorisable exp/sigmoid/elu/tanh of the compiled kernels against float64 numpy."""
    x = np.linspace(-40, 40, 400_001).astype(np.float32)
    out = np.empty_like(x)
    _apply(kind, x, out)
    expected = reference(x.astype(np.float64))
    error = np.abs(out - expected)
    assert (error <= 4e-7 * np.maximum(np.abs(expected), 1.0)).all()  # a few ulps at the scale of 1
    if rel is not None:  # and relative to the value, however small
        assert (error <= rel * np.abs(expected)).all()


def test_postprocess_clips_orders_and_names_non_finite_targets():
    targets = ("cpu_pct", "latency_ms")
    rng = np.random.default_rng(3)
    raw = rng.normal(50, 80, size=(4, 2, 5, 3)).astype(np.float32)  # crossing quantiles, out of range
    out = postprocess(raw, targets)
    expected = np.sort(raw.astype(np.float64), axis=-1)
    for j, name in enumerate(targets):
        metric = c.METRIC_BY_NAME[name]
        expected[:, j] = np.clip(expected[:, j], metric.low, np.inf if metric.high is None else metric.high)
    np.testing.assert_array_equal(out, expected)
    raw[2, 1, 3, 0] = np.inf
    with pytest.raises(ValueError, match=r"non-finite forecasts for \['latency_ms'\]"):
        postprocess(raw, targets)
