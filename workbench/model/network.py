"""Build the Temporal Fusion Transformer, either from a dataset (training) or from plain JSON (loading)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer
from torch import nn

from workbench.errors import BundleError
from workbench.model.config import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.losses import quantile_loss

# Hyper-parameters that are objects, rebuilt from the spec and config instead of serialised.
_OBJECT_HPARAMS = ("loss", "logging_metrics", "output_transformer", "dataset_parameters")


def network_from_dataset(dataset: Any, config: TrainConfig, spec: DatasetSpec) -> TemporalFusionTransformer:
    """Create an untrained network whose inputs match ``dataset`` (a ``TimeSeriesDataSet`` built from ``spec``)."""
    return TemporalFusionTransformer.from_dataset(
        dataset,
        hidden_size=config.hidden_size,
        attention_head_size=config.attention_head_size,
        hidden_continuous_size=config.hidden_continuous_size,
        lstm_layers=config.lstm_layers,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
        loss=quantile_loss(config, spec),
        logging_metrics=nn.ModuleList([]),
        reduce_on_plateau_patience=max(1, config.patience // 2),
    )


def network_hparams(network: TemporalFusionTransformer) -> dict[str, Any]:
    """Return the network's constructor arguments as plain JSON data."""
    out = {}
    for key, value in network.hparams.items():
        if key in _OBJECT_HPARAMS:
            continue
        if key == "embedding_sizes":
            value = {name: list(size) for name, size in value.items()}
        out[key] = value
    return out


def network_from_hparams(hparams: dict[str, Any], spec: DatasetSpec, config: TrainConfig) -> TemporalFusionTransformer:
    """Rebuild an (untrained) network from :func:`network_hparams` output, without pickle."""
    kwargs = dict(hparams)
    kwargs["embedding_sizes"] = {name: tuple(size) for name, size in kwargs.get("embedding_sizes", {}).items()}
    try:
        with warnings.catch_warnings():  # pytorch-forecasting keeps its loss modules as hparams on purpose
            warnings.filterwarnings("ignore", r"Attribute '.*' is an instance of `nn.Module`")
            network = TemporalFusionTransformer(
                **kwargs,
                loss=quantile_loss(config, spec),
                logging_metrics=nn.ModuleList([]),
                output_transformer=spec.target_normalizer(),
            )
    except (TypeError, ValueError, KeyError) as exc:
        raise BundleError(f"config.json network hyper-parameters do not build a TFT: {exc}") from exc
    return network.eval()


def interpolation_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """The linear map of the TFT's ``TimeDistributedInterpolation`` (``F.interpolate``, linear, aligned corners).

    Returns:
        ``(size_in, size_out)`` float64: ``x @ matrix`` interpolates rows of ``size_in`` values.
    """
    eye = torch.eye(size_in, dtype=torch.float64).unsqueeze(1)
    return F.interpolate(eye, size_out, mode="linear", align_corners=True).squeeze(1)


def stack_targets(per_target: Any) -> torch.Tensor:
    """Stack the network's per-target outputs (a list for several targets, a tensor for one) on dim 1."""
    parts = per_target if isinstance(per_target, list | tuple) else [per_target]
    return torch.stack([p.float() for p in parts], dim=1)
