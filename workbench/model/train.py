"""Train the multi-target TFT on a contract frame with Lightning and return a bundle in memory."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import lightning.pytorch as lp
import numpy as np
import pandas as pd
import polars as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from lightning.pytorch.loggers import Logger

from workbench import contract as c
from workbench.data import fingerprint
from workbench.errors import ConfigError
from workbench.features import TIME_IDX, to_model_frame
from workbench.model.bundle import Bundle, library_versions
from workbench.model.calibration import MIN_WINDOWS, BandCalibration
from workbench.model.config import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.loaders import TrainingData
from workbench.model.losses import loss_record
from workbench.model.network import network_from_dataset, network_hparams, stack_targets
from workbench.model.tracking import RunLog, Tracking
from workbench.model.training_speedups import sped_up
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


def train(
    frame: pl.DataFrame,
    config: TrainConfig,
    *,
    holdout: Holdout | None = None,
    incidents: pl.DataFrame | None = None,
    progress: bool = True,
    tracking: Tracking | None = None,
) -> Bundle:
    """Train a TFT on a validated contract frame.

    Batches are gathered straight from contiguous per-server arrays (:mod:`workbench.model.series`),
    drawn per epoch by :class:`~workbench.model.sampler.EpochSampler`; under ``strategy="ddp"``
    each rank draws its own disjoint shard.

    Args:
        frame: Contract frame (see :func:`workbench.contract.validate`); its last
            ``config.validation_steps`` steps (of the training part) are held out for early stopping.
        config: The training settings.
        holdout: Test period and servers to leave out (see :mod:`workbench.splits`): training sees
            only the other servers before the test period, and ``training.json`` records it.
        incidents: Ground truth of the incidents in ``frame``, needed by ``sampling="incidents"``.
        progress: Show Lightning's progress bar.
        tracking: Where the run is logged (TensorBoard, CSV, MLflow; nowhere when ``None``);
            ``training.json`` records it (``logs``).

    Returns:
        The trained network with its spec, config and training record, ready to save (on every
        rank of a distributed run; :func:`is_main_process` says which one should save it).

    Raises:
        ConfigError: the settings or the data do not allow training, or ``tracking`` asks for
            MLflow without the ``mlflow`` package (before anything is trained).
    """
    started = time.perf_counter()
    loggers = tracking.loggers() if tracking is not None else []
    lp.seed_everything(config.seed, workers=True, verbose=False)
    given = frame
    if holdout is not None:
        frame = split_frame(frame, holdout)[0]
    model_frame = to_model_frame(frame, config.targets)
    cutoff = split_point(model_frame, config)
    spec = DatasetSpec.fit(model_frame[model_frame[TIME_IDX] <= cutoff], config)
    network = untrained_network(spec, model_frame, config)
    data = TrainingData.build(model_frame, spec, network.hparams, config, cutoff, incidents)
    best = BestWeights()
    trainer = fit_network(network, data, config, best, progress=progress, loggers=loggers)
    if best.state is not None:
        network.load_state_dict(best.state)
    network = network.to("cpu").eval()
    calibration = fit_band_calibration(network, data)
    info = training_record(frame, config, cutoff, best, trainer, time.perf_counter() - started)
    info |= run_extras(config, spec, data, trainer, calibration, tracking, loggers, holdout, given)
    log.info("trained %d epochs, best val_loss %.4f", trainer.current_epoch, best.best_loss)
    hparams = network_hparams(network)
    return Bundle(network=network, spec=spec, config=config, hparams=hparams, training=info, calibration=calibration)


def run_extras(
    config: TrainConfig,
    spec: DatasetSpec,
    data: TrainingData,
    trainer: lp.Trainer,
    calibration: BandCalibration | None,
    tracking: Tracking | None,
    loggers: list[Logger],
    holdout: Holdout | None,
    given: pl.DataFrame,
) -> dict[str, Any]:
    """Return what ``training.json`` records of a run beyond :func:`training_record` (train and fine-tune alike)."""
    extras: dict[str, Any] = {
        "calibration": calibration.record if calibration else {"skipped": "too few validation windows"},
        "sampler": data.record(),
        "loss": loss_record(config, spec),
        "distributed": distributed_record(trainer, config),
    }
    if tracking is not None and loggers:
        extras["logs"] = tracking.record(loggers)
    if holdout is not None:
        extras[HOLDOUT_KEY] = holdout.to_json()
        extras["data_fingerprint"] = fingerprint(given)  # the whole dataset, so an evaluation can check it
    return extras


def fit_network(
    network: Any,
    data: TrainingData,
    config: TrainConfig,
    best: BestWeights,
    *,
    progress: bool,
    loggers: list[Logger],
) -> lp.Trainer:
    """Fit ``network`` in place with Lightning under early stopping; ``best`` keeps the best epoch's weights."""
    network.train()  # Lightning keeps the modes it finds: a loaded network is in eval mode (no dropout)
    with quiet_lightning():
        trainer = _trainer(config, [best, RunLog(config, best)], progress, loggers)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*does not have many workers.*")
            warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
            # Every rank validates on all validation windows, so val_loss is the same on each.
            warnings.filterwarnings("ignore", r".*when logging on epoch level in distributed setting.*")
            # Short (tiny) epochs log no per-step loss; the losses are logged per epoch anyway.
            warnings.filterwarnings("ignore", r".*is smaller than the logging interval Trainer\(log_every_n_steps.*")
            with sped_up(network):
                trainer.fit(network, train_dataloaders=data.train_loader, val_dataloaders=data.val_loader)
    return trainer


def fit_band_calibration(network: Any, data: TrainingData, batch_size: int = 256) -> BandCalibration | None:
    """Fit the p10–p90 band calibration on the validation windows, each read with its longest history.

    These windows lie after the training period, so the network never fitted them; the
    longest history is what a server in operation has. ``None`` with too few windows.
    """
    longest = np.flatnonzero(data.val_lengths == data.val_windows.history)
    if len(longest) < MIN_WINDOWS:
        return None
    spec, table = data.batches.spec, data.table
    quantiles, actual = [], []
    with torch.no_grad():
        for lo in range(0, len(longest), batch_size):
            part = longest[lo : lo + batch_size]
            x, (y, _) = table.batch(data.val_windows.take(part), data.val_lengths[part], spec, data.batches.x_reals)
            quantiles.append(stack_targets(network(x)["prediction"]).numpy())
            actual.append(stack_targets(y).numpy())
    return BandCalibration.fit(spec.targets, np.concatenate(quantiles), np.concatenate(actual))


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence the hardware lines and tips a Lightning ``Trainer`` logs at INFO on every start."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def resolve_precision(config: TrainConfig) -> str:
    """Return Lightning's precision: ``auto`` is ``bf16-mixed`` on a CUDA device that supports it, else ``32-true``."""
    if config.precision != "auto":
        return config.precision
    on_cuda = config.accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()
    return "bf16-mixed" if on_cuda and torch.cuda.is_bf16_supported() else "32-true"


def _trainer(config: TrainConfig, callbacks: list[Callback], progress: bool, loggers: list[Logger]) -> lp.Trainer:
    return lp.Trainer(
        max_epochs=config.max_epochs,
        max_time=None if config.max_time_minutes is None else timedelta(minutes=config.max_time_minutes),
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=resolve_precision(config),  # type: ignore[arg-type]
        gradient_clip_val=config.gradient_clip_val,
        limit_val_batches=config.limit_val_batches,
        callbacks=[EarlyStopping(monitor="val_loss", patience=config.patience, min_delta=config.min_delta), *callbacks],
        logger=loggers or False,
        enable_autolog_hparams=False,  # RunLog logs the TrainConfig instead of the network's constructor arguments
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the epoch sampler shards by rank itself
    )


def untrained_network(spec: DatasetSpec, model_frame: pd.DataFrame, config: TrainConfig) -> Any:
    """Create the untrained network of a spec (built from a dataset on one server's first window)."""
    rows = model_frame.groupby(c.SERVER, sort=False)[TIME_IDX].transform("size")
    longest = model_frame.loc[rows == rows.max(), c.SERVER].iloc[0]
    sample = model_frame[model_frame[c.SERVER] == longest].head(spec.max_encoder_length + spec.horizon)
    with warnings.catch_warnings():
        # pytorch-forecasting stores its loss modules as hparams on purpose; the tiny dataset's
        # scalers warn about feature names and read-only arrays, which do not matter here.
        warnings.filterwarnings("ignore", r"Attribute '.*' is an instance of `nn.Module`")
        warnings.filterwarnings("ignore", r"X has feature names")
        warnings.filterwarnings("ignore", r"The given NumPy array is not writable")
        return network_from_dataset(spec.build(sample.reset_index(drop=True), train=True), config, spec)


def distributed_record(trainer: lp.Trainer, config: TrainConfig) -> dict[str, Any]:
    """Describe the run's strategy, world size, precision and seeds for ``training.json``."""
    return {
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
        "seed": config.seed,
        "epoch_seeds": "numpy default_rng([seed, epoch]) on every rank; rank r takes its own positions",
    }


def stop_reason(trainer: lp.Trainer) -> str:
    """Say why a finished fit stopped: ``early_stopping``, ``max_time`` or ``max_epochs``."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
            return "early_stopping"
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, Timer) and (callback.time_remaining() or 0.0) <= 0:
            return "max_time"
    return "max_epochs"


def training_record(
    frame: pl.DataFrame, config: TrainConfig, cutoff: int, best: BestWeights, trainer: lp.Trainer, seconds: float
) -> dict[str, Any]:
    """Return the core of ``training.json``: the data, the epochs, the losses and what stopped the fit."""
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
