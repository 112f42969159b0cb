"""The window-scaled quantile loss: every window counts alike whatever its server's scale."""

import warnings

import pytest
import torch
from pytorch_forecasting.metrics import QuantileLoss

from workbench.cli import main
from workbench.model import PRESETS, TrainConfig
from workbench.model.losses import WindowScaledQuantileLoss, window_scale

QUANTILES = [0.1, 0.5, 0.9]


def test_window_scale_is_the_history_standard_deviation_with_a_floor():
    history = torch.tensor([[1.0, 3.0, 5.0, 99.0], [2.0, 2.0, 2.0, 2.0]])
    scale = window_scale(history, torch.tensor([3, 4]), floor=0.5)
    assert scale[0].item() == pytest.approx(2.0)  # std of 1, 3, 5; the padded 99 is not read
    assert scale[1].item() == 0.5  # a constant history takes the floor, not zero


def test_a_busy_and_an_idle_window_with_the_same_relative_error_lose_the_same():
    loss = WindowScaledQuantileLoss(QUANTILES, floor=1e-6)
    base = torch.linspace(0.0, 1.0, 12)[None, :]
    history = torch.cat([base, base * 100.0])  # the busy server swings 100x the idle one
    target = torch.cat([torch.full((1, 4), 0.5), torch.full((1, 4), 50.0)])
    prediction = torch.stack([target * 0.9, target * 1.1, target * 1.3], dim=-1)  # 10 % off each
    parts = [
        WindowScaledQuantileLoss(QUANTILES, floor=1e-6)(
            prediction[i : i + 1], (target[i : i + 1], None), history[i : i + 1], torch.tensor([12])
        )
        for i in range(2)
    ]
    assert parts[0].item() == pytest.approx(parts[1].item(), rel=1e-5)
    plain = [QuantileLoss(QUANTILES)(prediction[i : i + 1], target[i : i + 1]) for i in range(2)]
    assert plain[1].item() == pytest.approx(100 * plain[0].item(), rel=1e-5)  # what the plain loss does
    both = loss(prediction, (target, None), history, torch.tensor([12, 12]))
    assert both.item() == pytest.approx(parts[0].item(), rel=1e-5)


def test_the_loss_predicts_like_the_quantile_loss():
    output = torch.randn(3, 96, 3).sort(dim=-1).values
    scaled, plain = WindowScaledQuantileLoss(QUANTILES, floor=0.1), QuantileLoss(QUANTILES)
    assert torch.equal(scaled.to_prediction(output), plain.to_prediction(output))
    assert torch.equal(scaled.to_quantiles(output), plain.to_quantiles(output))


def test_a_window_scaled_bundle_trains_saves_and_records_its_loss(tiny_fleet, tmp_path):
    from workbench.model import load_bundle, save_bundle
    from workbench.model.train import train

    config = TrainConfig.preset("tiny", loss="window_scaled", targets=["cpu_pct", "mem_pct"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = train(tiny_fleet, config, progress=False)
    assert bundle.training["loss"]["kind"] == "window_scaled"
    assert set(bundle.training["loss"]["floors"]) == {"cpu_pct", "mem_pct"}
    loaded = load_bundle(save_bundle(bundle, tmp_path / "b"))
    assert loaded.config.loss == "window_scaled"
    assert isinstance(loaded.network.loss.metrics[0], WindowScaledQuantileLoss)


def test_an_unknown_loss_is_refused_naming_the_choices():
    with pytest.raises(Exception, match="loss: allowed quantile, window_scaled"):
        TrainConfig.from_dict({"loss": "mse"})


def test_the_cli_offers_every_preset():
    option = next(p for p in main.commands["train"].params if p.name == "preset")
    assert list(option.type.choices) == list(PRESETS)
