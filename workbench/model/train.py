"""Train the multi-target TFT on a contract frame with Lightning and return a bundle in memory."""

from __future__ import annotations

import logging
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as lp
import numpy as np
import pandas as pd
import polars as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from lightning.pytorch.loggers import CSVLogger

from workbench import contract as c
from workbench.data import fingerprint
from workbench.errors import ConfigError
from workbench.features import TIME_IDX, to_model_frame
from workbench.model.bundle import Bundle, library_versions
from workbench.model.config import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.network import network_from_dataset, network_hparams
from workbench.splits import HOLDOUT_KEY, Holdout, split_frame

log = logging.getLogger(__name__)


class BestWeights(Callback):
    """Keep the weights of the epoch with the lowest validation loss, in memory.

    Lightning's checkpoint files are pickles; the bundle is written from these tensors instead.
    """

    def __init__(self) -> None:
        self.best_loss = float("inf")
        self.best_epoch = -1
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []

    def on_validation_epoch_end(self, trainer: lp.Trainer, pl_module: lp.LightningModule) -> None:
        """Record this epoch's validation loss and copy the weights when it is the best so far."""
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics["val_loss"])
        self.history.append(loss)
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, trainer.current_epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}


def split_point(model_frame: pd.DataFrame, config: TrainConfig) -> int:
    """Return the last training step; later steps are validation targets.

    Raises:
        ConfigError: when the series are too short for one training and one validation window.
    """
    first, last = int(model_frame[TIME_IDX].min()), int(model_frame[TIME_IDX].max())
    cutoff = last - config.validation_steps
    needed = config.min_encoder_length + config.horizon
    if cutoff - first + 1 < needed or config.validation_steps < config.horizon:
        steps = last - first + 1
        raise ConfigError(
            f"training needs at least min_encoder_length + horizon = {needed} steps before the "
            f"{config.validation_steps} validation steps (validation_steps >= horizon = {config.horizon}); "
            f"the data spans {steps} steps ({steps * c.STEP_SECONDS / 86400:.1f} days)"
        )
    return cutoff


def thin_validation(dataset: Any, config: TrainConfig) -> Any:
    """Keep ``config.val_encoder_lengths`` history lengths per server's validation window (all when 0).

    pytorch-forecasting makes one validation sample per possible history length of the same
    decoder window (253 per server at 36..288 steps); a few spread lengths, plus each server's
    longest, measure the same thing at a fraction of the cost.
    """
    if not config.val_encoder_lengths:
        return dataset
    grid = np.linspace(config.min_encoder_length, config.max_encoder_length, config.val_encoder_lengths)
    keep = set(np.unique(grid.round().astype(int)).tolist())

    def wanted(index: pd.DataFrame) -> pd.Series:
        length = index["time_idx_first_prediction"] - index["time_idx_first"]
        return length.isin(keep) | (length == length.groupby(index[c.SERVER]).transform("max"))

    return dataset.filter(wanted)


def train(
    frame: pl.DataFrame,
    config: TrainConfig,
    *,
    holdout: Holdout | None = None,
    progress: bool = True,
    log_dir: str | Path | None = None,
) -> Bundle:
    """Train a TFT on a validated contract frame.

    Args:
        frame: Contract frame (see :func:`workbench.contract.validate`); its last
            ``config.validation_steps`` steps (of the training part) are held out for early stopping.
        config: The training settings.
        holdout: Test period and servers to leave out (see :mod:`workbench.splits`): training sees
            only the other servers before the test period, and ``training.json`` records it.
        progress: Show Lightning's progress bar.
        log_dir: Where Lightning writes CSV logs (none when ``None``).

    Returns:
        The trained network with its spec, config and training record, ready to save.
    """
    started = time.perf_counter()
    lp.seed_everything(config.seed, workers=True, verbose=False)
    given = frame
    if holdout is not None:
        frame = split_frame(frame, holdout)[0]
    model_frame = to_model_frame(frame, config.targets)
    cutoff = split_point(model_frame, config)
    spec = DatasetSpec.fit(model_frame[model_frame[TIME_IDX] <= cutoff], config)
    train_ds = spec.build(model_frame[model_frame[TIME_IDX] <= cutoff], train=True)
    val_ds = thin_validation(spec.build(model_frame, min_prediction_idx=cutoff + 1), config)
    with warnings.catch_warnings():  # pytorch-forecasting stores its loss modules as hparams on purpose
        warnings.filterwarnings("ignore", r"Attribute '.*' is an instance of `nn.Module`")
        network = network_from_dataset(train_ds, config)
    best = BestWeights()
    trainer = lp.Trainer(
        max_epochs=config.max_epochs,
        max_time=None if config.max_time_minutes is None else timedelta(minutes=config.max_time_minutes),
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        precision=config.precision,  # type: ignore[arg-type]
        gradient_clip_val=config.gradient_clip_val,
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches,
        callbacks=[EarlyStopping(monitor="val_loss", patience=config.patience), best],
        logger=CSVLogger(str(log_dir), name="train") if log_dir else False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    # pytorch-forecasting builds each sample in Python: a loader process overlaps that with the network.
    loader = {"num_workers": config.num_workers, "persistent_workers": config.num_workers > 0}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*does not have many workers.*")
        warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        trainer.fit(
            network,
            train_dataloaders=train_ds.to_dataloader(train=True, batch_size=config.batch_size, **loader),
            val_dataloaders=val_ds.to_dataloader(train=False, batch_size=config.batch_size * 4, **loader),
        )
    if best.state is not None:
        network.load_state_dict(best.state)
    network = network.to("cpu").eval()
    info = _training_record(frame, config, cutoff, best, trainer, time.perf_counter() - started)
    if holdout is not None:
        info[HOLDOUT_KEY] = holdout.to_json()
        info["data_fingerprint"] = fingerprint(given)  # the whole dataset, so an evaluation can check it
    log.info("trained %d epochs, best val_loss %.4f", trainer.current_epoch, best.best_loss)
    return Bundle(network=network, spec=spec, config=config, hparams=network_hparams(network), training=info)


def stop_reason(trainer: lp.Trainer) -> str:
    """Say why a finished fit stopped: ``early_stopping``, ``max_time`` or ``max_epochs``."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
            return "early_stopping"
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, Timer) and (callback.time_remaining() or 0.0) <= 0:
            return "max_time"
    return "max_epochs"


def _training_record(
    frame: pl.DataFrame, config: TrainConfig, cutoff: int, best: BestWeights, trainer: lp.Trainer, seconds: float
) -> dict[str, Any]:
    ts = frame[c.TIMESTAMP]
    return {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_fingerprint": fingerprint(frame),
        "data_start": ts.min().isoformat(),  # type: ignore[union-attr]
        "data_end": ts.max().isoformat(),  # type: ignore[union-attr]
        "validation_start": c.step_time(cutoff + 1).isoformat(),
        "servers": frame[c.SERVER].n_unique(),
        "rows": frame.height,
        "epochs": trainer.current_epoch,
        "stopped_by": stop_reason(trainer),
        "best_epoch": best.best_epoch,
        "best_val_loss": best.best_loss,
        "val_loss_history": best.history,
        "seconds": round(seconds, 2),
        "device": str(trainer.strategy.root_device),
        "library_versions": library_versions(),
    }
