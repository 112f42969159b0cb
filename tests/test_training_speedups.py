"""The training rewrites compute the stock network's function and gradients; the counter dropout is a dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_forecasting.models.nn.rnn import LSTM
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import VariableSelectionNetwork
from torch import nn

from workbench.features import TIME_IDX, to_model_frame
from workbench.model import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.dropout import dropout
from workbench.model.loaders import TrainingData
from workbench.model.train import split_point, untrained_network
from workbench.model.training_speedups import (
    EqualLengthLSTM,
    MatmulInterpolation,
    SharedValueSelection,
    restore,
    speed_up,
)


@pytest.fixture(scope="module")
def network_and_batches(tiny_fleet):
    config = TrainConfig.preset("tiny", hidden_size=16, attention_head_size=2, dropout=0.0)
    frame = to_model_frame(tiny_fleet, config.targets)
    cutoff = split_point(frame, config)
    spec = DatasetSpec.fit(frame[frame[TIME_IDX] <= cutoff], config)

    def network():
        torch.manual_seed(0)
        return untrained_network(spec, frame, config)

    data = TrainingData.build(frame, spec, network().hparams, config, cutoff)
    batches = [next(iter(data.train_loader)), next(iter(data.val_loader))]
    return network, batches


def _loss_and_grads(network, batch):
    network.zero_grad()
    x, y = batch
    out = network(x)["prediction"]
    loss = network.loss(out, y)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in network.named_parameters() if p.grad is not None}
    return torch.stack([o.detach() for o in out]), loss.item(), grads


@pytest.mark.parametrize("which", [0, 1], ids=["train batch", "validation batch"])
def test_sped_up_network_has_the_stock_outputs_and_gradients(network_and_batches, which):
    make, batches = network_and_batches
    stock, fast = make(), make()
    swapped = speed_up(fast)
    assert {"encoder_variable_selection", "decoder_variable_selection", "lstm_encoder", "lstm_decoder"} <= set(swapped)
    stock.train(), fast.train()
    out_a, loss_a, grads_a = _loss_and_grads(stock, batches[which])
    out_b, loss_b, grads_b = _loss_and_grads(fast, batches[which])
    assert torch.allclose(out_a, out_b, atol=1e-4, rtol=1e-4)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for key, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[key], atol=1e-5, rtol=1e-3), key


def test_restore_gives_back_stock_modules_and_the_same_state_dict(network_and_batches):
    make, _ = network_and_batches
    stock, fast = make(), make()
    speed_up(fast)
    assert isinstance(fast.encoder_variable_selection, SharedValueSelection)
    assert isinstance(fast.lstm_encoder, EqualLengthLSTM)
    assert any(isinstance(m, MatmulInterpolation) for m in fast.modules())
    assert fast.state_dict().keys() == stock.state_dict().keys()
    restore(fast)
    assert type(fast.encoder_variable_selection) is VariableSelectionNetwork
    assert type(fast.lstm_encoder) is LSTM
    assert all(type(a) is type(b) for a, b in zip(fast.modules(), stock.modules(), strict=True))


def test_counter_dropout_keeps_each_element_with_probability_one_minus_p_and_scales_it():
    torch.manual_seed(3)
    x = torch.ones(400, 500, requires_grad=True)
    out = dropout(x, 0.3, True)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    rows = kept.float().mean(dim=1).numpy()
    assert abs(rows.std() - np.sqrt(0.7 * 0.3 / 500)) < 0.004  # rows independent: binomial spread
    out.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7))
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3, True), out.detach())
    assert not torch.equal(dropout(x, 0.3, True), out.detach())
    assert dropout(x, 0.3, False) is x


def test_stock_dropout_layers_are_swapped_and_behave_as_dropout(network_and_batches):
    make, _ = network_and_batches
    fast = make()
    speed_up(fast)
    layers = [m for m in fast.modules() if isinstance(m, nn.Dropout)]
    assert layers and all(type(m) is not nn.Dropout for m in layers)
    layer = layers[0]
    layer.p = 0.5
    layer.train()
    assert (layer(torch.ones(10_000)) == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    layer.eval()
    assert torch.equal(layer(torch.ones(10)), torch.ones(10))
