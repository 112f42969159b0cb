"""The training and validation loaders that feed Lightning, built from one :class:`SeriesTable`.

Each loader item is a whole batch (``batch_size=None``): the sampler yields window positions
and encoder lengths, :class:`WindowBatches` gathers their tensors. ``training.json`` records
how the windows were drawn (:meth:`TrainingData.record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.model.config import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.sampler import (
    RANDOMIZE_BETA,
    Draw,
    EpochSampler,
    FixedBatches,
    Weighting,
    incident_weighting,
    uniform,
    validation_windows,
)
from workbench.model.series import SeriesTable, WindowSet, valid_windows

SAMPLER_VERSION = 1


class WindowBatches(Dataset[Any]):
    """Map a draw (window positions and lengths) to the batch :meth:`SeriesTable.batch` gathers."""

    def __init__(self, table: SeriesTable, windows: WindowSet, spec: DatasetSpec, x_reals: list[str]) -> None:
        self.table, self.windows, self.spec, self.x_reals = table, windows, spec, x_reals

    def __getitem__(self, draw: Draw) -> Any:
        picks, lengths = draw
        return self.table.batch(self.windows.take(picks), lengths, self.spec, self.x_reals)


@dataclass
class TrainingData:
    """Everything training reads: the table, its windows and the two loaders.

    Attributes:
        table: The fleet's targets as contiguous arrays.
        train_windows: Windows whose decoder ends at or before the validation cut-off.
        val_windows: Validation windows (one per history length validated).
        val_lengths: Their history lengths.
        weighting: How training windows are weighted.
        sampler: The training sampler.
        train_loader: Lightning's training loader.
        val_loader: Lightning's validation loader.
        batches: What turns a draw into a batch (the table, spec and network inputs).
    """

    table: SeriesTable
    train_windows: WindowSet
    val_windows: WindowSet
    val_lengths: np.ndarray
    weighting: Weighting
    sampler: EpochSampler
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    batches: WindowBatches

    @classmethod
    def build(
        cls,
        model_frame: pd.DataFrame,
        spec: DatasetSpec,
        hparams: Any,
        config: TrainConfig,
        cutoff: int,
        incidents: pl.DataFrame | None = None,
    ) -> TrainingData:
        """Index the windows of a model frame and make the loaders.

        Args:
            model_frame: :func:`workbench.features.to_model_frame` output (training and validation steps).
            spec: The dataset spec.
            hparams: The network's hyper-parameters (``x_reals``, ``embedding_labels``).
            config: The training settings.
            cutoff: Last training step; validation decoders start after it.
            incidents: Ground truth, for ``sampling="incidents"``.
        """
        table = SeriesTable.from_model_frame(model_frame, spec.targets, dict(hparams["embedding_labels"][c.PROFILE]))
        lengths = {"min_encoder": spec.min_encoder_length, "max_encoder": spec.max_encoder_length}
        train_windows = valid_windows(table, **lengths, horizon=spec.horizon, last_step=cutoff)
        val_all = valid_windows(table, **lengths, horizon=spec.horizon, first_decoder_step=cutoff + 1)
        val_all = val_all.take(
            (table.step_of(val_all.decoder_start, val_all.series) - cutoff - 1) % config.val_stride == 0
        )
        if len(train_windows) == 0 or len(val_all) == 0:
            raise ConfigError(
                "no training or validation window: every server needs min_encoder_length + horizon steps "
                "without a gap longer than the contract's MAX_GAP_STEPS on each side of the cut-off"
            )
        val_windows, val_lengths = validation_windows(val_all, **lengths, count=config.val_encoder_lengths)
        weighting = _weighting(config, table, train_windows, incidents, spec.horizon)
        x_reals = list(hparams["x_reals"])
        sampler = EpochSampler(
            train_windows,
            batch_size=config.batch_size,
            batches=_batches_per_epoch(config, len(train_windows)),
            min_encoder=spec.min_encoder_length,
            randomize=spec.randomize_length,
            seed=config.seed,
            weights=weighting.weights,
        )
        train_batches = WindowBatches(table, train_windows, spec, x_reals)
        train_loader = loader(train_batches, sampler, config.num_workers)
        val_sampler = FixedBatches(len(val_windows), val_lengths, config.batch_size * 4)
        val_loader = loader(WindowBatches(table, val_windows, spec, x_reals), val_sampler, config.num_workers)
        return cls(
            table, train_windows, val_windows, val_lengths, weighting, sampler, train_loader, val_loader, train_batches
        )

    def record(self) -> dict[str, Any]:
        """Return how batches were drawn, for ``training.json``."""
        return {
            "kind": "windows",
            "version": SAMPLER_VERSION,
            "train_windows": len(self.train_windows),
            "validation_windows": len(self.val_windows),
            "batch_size": self.sampler.batch_size,
            "batches_per_epoch_per_rank": self.sampler.batches,
            "randomize_length": list(RANDOMIZE_BETA) if self.sampler.randomize else None,
            "weighting": self.weighting.recipe,
        }


def _weighting(
    config: TrainConfig, table: SeriesTable, windows: WindowSet, incidents: pl.DataFrame | None, horizon: int
) -> Weighting:
    if config.sampling == "uniform":
        return uniform()
    if incidents is None:
        raise ConfigError("sampling=incidents needs the incidents' ground truth (incidents.parquet beside the data)")
    return incident_weighting(table, windows, incidents, config.incident_weight, horizon)


def _batches_per_epoch(config: TrainConfig, windows: int) -> int:
    """``limit_train_batches`` as a count of batches, or as a share of one pass over the windows."""
    limit = config.limit_train_batches
    if isinstance(limit, float):
        return max(1, round(limit * windows / config.batch_size))
    return limit


def loader(batches: WindowBatches, sampler: Sampler[Draw], workers: int) -> DataLoader[Any]:
    """Return a data loader that yields whole batches (``batch_size=None``), built in ``workers`` processes."""
    return DataLoader(
        batches,
        sampler=sampler,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def _as_is(batch: Any) -> Any:
    return batch
