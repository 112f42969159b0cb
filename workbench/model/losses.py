"""Training losses of the TFT: the quantile loss in each metric's units, or per window's own scale."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_forecasting.metrics import MASE, MultiLoss, QuantileLoss
from torch.nn.utils import rnn

from workbench.model.config import TrainConfig
from workbench.model.dataset import DatasetSpec

# A window's scale is never below this share of the metric's typical per-window spread: a VM
# idling at a constant value would otherwise weigh its one blip thousands of times over.
SCALE_FLOOR_SHARE = 0.1


class WindowScaledQuantileLoss(QuantileLoss, MASE):
    """The quantile loss divided by each window's own spread (its history's standard deviation).

    pytorch-forecasting computes the loss in the metric's units, so a busy VM whose CPU swings by
    30 points weighs a hundred times an idle one that moves by 0.3, and the model learns the busy
    few. Divided by the window's spread, every window counts alike, which is what a scale-free
    score (MASE) rewards. Deriving from ``MASE`` makes pytorch-forecasting pass the encoder's
    targets, from which the spread is computed; prediction, quantiles and rescaling are the
    quantile loss's own, so a bundle predicts exactly as with :class:`QuantileLoss`.
    """

    def __init__(self, quantiles: list[float], floor: float) -> None:
        super().__init__(quantiles=quantiles)
        self.floor = float(floor)

    def update(self, y_pred: Any, target: Any, encoder_target: Any, encoder_lengths: Any = None) -> None:
        """Accumulate the scaled loss of one batch (pytorch-forecasting's metric protocol)."""
        weight = None
        if isinstance(target, list | tuple):
            target, weight = target
        if isinstance(target, rnn.PackedSequence):
            target, lengths = rnn.pad_packed_sequence(target, batch_first=True)
            lengths = lengths.to(target.device)
        else:
            lengths = torch.full((target.size(0),), target.size(1), dtype=torch.long, device=target.device)
        if encoder_lengths is None:
            encoder_target, encoder_lengths = rnn.pad_packed_sequence(encoder_target, batch_first=True)
        scale = window_scale(encoder_target, encoder_lengths.to(encoder_target.device), self.floor)
        losses = QuantileLoss.loss(self, y_pred, target) / scale[:, None, None]
        if weight is not None:
            losses = losses * weight.unsqueeze(-1)
        self._update_losses_and_lengths(losses, lengths)


def window_scale(encoder_target: torch.Tensor, lengths: torch.Tensor, floor: float) -> torch.Tensor:
    """Each window's standard deviation over its own history steps, at least ``floor``.

    Args:
        encoder_target: ``(B, L)`` history values, left-aligned, padded after ``lengths``.
        lengths: ``(B,)`` history steps of each window.
        floor: Smallest scale returned.

    Returns:
        ``(B,)`` scales.
    """
    steps = torch.arange(encoder_target.size(1), device=encoder_target.device)
    mask = (steps[None, :] < lengths[:, None]).to(encoder_target.dtype)
    n = mask.sum(dim=1).clamp_min(1.0)
    mean = (encoder_target * mask).sum(dim=1) / n
    var = (((encoder_target - mean[:, None]) ** 2) * mask).sum(dim=1) / (n - 1).clamp_min(1.0)
    return var.sqrt().clamp_min(floor).detach()


def target_weights(spec: DatasetSpec) -> list[float]:
    """Per-target weights of the ``quantile`` loss: the inverse of each target's typical per-window scale.

    The quantile loss is computed in each metric's own units (the network's output is scaled
    back before it), so unweighted, ``latency_ms`` (a window's spread is about 76 ms) would
    outweigh ``error_rate`` (about 0.001) 70,000 to 1 and the model would learn mostly the
    former. Dividing by the mean per-window standard deviation, which the spec stores, gives
    every metric a comparable share; the weights are scaled to average 1.
    """
    raw = [1.0 / max(spec.scale_moments[t]["scale"][0], 1e-9) for t in spec.targets]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]


def _one(config: TrainConfig, spec: DatasetSpec, target: str) -> QuantileLoss:
    quantiles = list(config.quantiles)
    if config.loss == "window_scaled":
        typical = max(spec.scale_moments[target]["scale"][0], 1e-9)
        return WindowScaledQuantileLoss(quantiles, floor=SCALE_FLOOR_SHARE * typical)
    return QuantileLoss(quantiles)


def quantile_loss(config: TrainConfig, spec: DatasetSpec) -> MultiLoss | QuantileLoss:
    """Return the training loss a config names (a ``MultiLoss`` for several targets).

    ``quantile`` weighs the targets by :func:`target_weights`; ``window_scaled`` is scale-free
    already, so its targets weigh alike.
    """
    if len(config.targets) == 1:
        return _one(config, spec, config.targets[0])
    parts = [_one(config, spec, t) for t in config.targets]
    weights = target_weights(spec) if config.loss == "quantile" else [1.0] * len(parts)
    return MultiLoss(parts, weights=weights)


def loss_record(config: TrainConfig, spec: DatasetSpec) -> dict[str, Any]:
    """Describe the loss of a training run for ``training.json``."""
    if config.loss == "window_scaled":
        return {
            "kind": "window_scaled",
            "quantiles": list(config.quantiles),
            "rule": "quantile loss / the window's history standard deviation, at least "
            f"{SCALE_FLOOR_SHARE} x the metric's mean per-window standard deviation; targets weigh alike",
            "floors": {t: SCALE_FLOOR_SHARE * spec.scale_moments[t]["scale"][0] for t in spec.targets},
        }
    return {
        "kind": "quantile",
        "quantiles": list(config.quantiles),
        "target_weights": dict(zip(spec.targets, target_weights(spec), strict=True)),
        "weights_rule": "1 / mean per-window standard deviation of each target, scaled to average 1",
    }
