"""Where a training run is logged: TensorBoard and CSV under the bundle, MLflow when asked."""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as lp
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

from workbench.errors import ConfigError
from workbench.model.config import TrainConfig

log = logging.getLogger(__name__)

LOGS_DIR = "logs"  # the training logs' folder inside a bundle
METRICS_CSV = "metrics.csv"  # written by CSVLogger in each run's folder
DEFAULT_EXPERIMENT = "workbench"
MLFLOW_MISSING = (
    "MLflow tracking (--mlflow-uri or MLFLOW_TRACKING_URI) needs the mlflow package: pip install mlflow-skinny"
)


@dataclass(frozen=True)
class Tracking:
    """Where a training run is logged: TensorBoard files and, optionally, an MLflow tracking server.

    Each run gets its own ``version_N`` folder in ``log_dir`` (the next free number, so training
    into the same folder again keeps the earlier runs): TensorBoard's event file, ``hparams.yaml``
    (the :class:`TrainConfig`) and ``metrics.csv`` (the same scalars as plain text).

    Attributes:
        log_dir: Folder of the runs' logs (``None``: no log files).
        bundle_dir: Folder the bundle will be saved to; ``training.json`` gives the log paths
            relative to it when they lie inside it.
        mlflow_uri: MLflow tracking URI to log the run to as well (needs the ``mlflow`` package).
        mlflow_experiment: The MLflow experiment of the run.
        run_name: The MLflow run name.
    """

    log_dir: Path | None = None
    bundle_dir: Path | None = None
    mlflow_uri: str | None = None
    mlflow_experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None

    @classmethod
    def for_bundle(
        cls,
        bundle_dir: str | Path,
        *,
        log_dir: str | Path | None = None,
        mlflow_uri: str | None = None,
        mlflow_experiment: str = DEFAULT_EXPERIMENT,
    ) -> Tracking:
        """Log under ``bundle_dir/logs`` (or ``log_dir``), the MLflow run named after the bundle folder."""
        bundle = Path(bundle_dir)
        logs = Path(log_dir) if log_dir is not None else bundle / LOGS_DIR
        return cls(logs, bundle, mlflow_uri or None, mlflow_experiment, bundle.resolve().name)

    def loggers(self) -> list[Logger]:
        """Create the run's Lightning loggers (nothing is written yet).

        Raises:
            ConfigError: MLflow tracking is asked for but ``mlflow`` is not installed, or the
                tracking URI is refused.
        """
        loggers: list[Logger] = []
        if self.log_dir is not None:
            tensorboard = TensorBoardLogger(str(self.log_dir), name="", default_hp_metric=False)
            # CSV first: RunLog's first log_hyperparams then makes the run folder before TensorBoard
            # writes to it (CSVLogger warns about a folder that is not empty).
            loggers += [CSVLogger(str(self.log_dir), name="", version=tensorboard.version), tensorboard]
        if self.mlflow_uri:
            loggers.append(self._mlflow_logger(self.mlflow_uri))
        return loggers

    def _mlflow_logger(self, uri: str) -> MLFlowLogger:
        """Create the MLflow logger, checking the server and creating the experiment first (on rank 0)."""
        if not mlflow_installed():
            raise ConfigError(MLFLOW_MISSING)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            mlflow = MLFlowLogger(self.mlflow_experiment, self.run_name, tracking_uri=uri)
            if is_main_process():  # reaches the server before training, and no "not found" warning later
                client, name = MlflowClient(uri), self.mlflow_experiment
                if client.get_experiment_by_name(name) is None:
                    client.create_experiment(name)
                    log.info("created MLflow experiment %r in %s", name, uri)
        except MlflowException as exc:
            raise ConfigError(f"MLflow tracking URI {uri!r}: {exc.message}") from exc
        return mlflow

    def record(self, loggers: list[Logger]) -> dict[str, Any]:
        """Say where the run's logs are, for ``training.json`` (``logs``)."""
        record: dict[str, Any] = {}
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                record["tensorboard"] = self._relative(Path(logger.log_dir))
                record["view"] = f"tensorboard --logdir {shlex.quote(str(self.log_dir))}"
            elif isinstance(logger, CSVLogger):
                record["csv"] = self._relative(Path(logger.log_dir) / METRICS_CSV)
            elif isinstance(logger, MLFlowLogger):
                record["mlflow"] = {
                    "tracking_uri": self.mlflow_uri,
                    "experiment": self.mlflow_experiment,
                    "experiment_id": logger.experiment_id,
                    "run_id": logger.run_id,
                    "run_name": self.run_name,
                }
        return record

    def _relative(self, path: Path) -> str:
        if self.bundle_dir is not None and path.resolve().is_relative_to(self.bundle_dir.resolve()):
            return path.resolve().relative_to(self.bundle_dir.resolve()).as_posix()
        return str(path)


def mlflow_installed() -> bool:
    """Whether the ``mlflow`` package (or ``mlflow-skinny``) can be imported."""
    return importlib.util.find_spec("mlflow") is not None


class BestSoFar(Protocol):
    """The best epoch seen so far (``workbench.model.train.BestWeights`` keeps it)."""

    best_loss: float
    best_epoch: int


class RunLog(Callback):
    """Log the settings once when the fit starts and the best epoch when it ends, to every logger.

    The per-epoch losses are logged by the network itself (``train_loss_epoch``, ``val_loss``).
    """

    def __init__(self, config: TrainConfig, best: BestSoFar) -> None:
        self.params = flat_hparams(config)
        self.best = best

    def on_fit_start(self, trainer: lp.Trainer, pl_module: lp.LightningModule) -> None:
        """Log the training settings as hyper-parameters."""
        for logger in trainer.loggers:
            logger.log_hyperparams(self.params)

    def on_fit_end(self, trainer: lp.Trainer, pl_module: lp.LightningModule) -> None:
        """Log the best validation loss and its epoch (TensorBoard: in its HPARAMS table as well)."""
        if self.best.best_epoch < 0:
            return
        summary = {"best_val_loss": self.best.best_loss, "best_epoch": float(self.best.best_epoch)}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.params, metrics=summary, step=trainer.global_step)
            else:
                logger.log_metrics(summary, step=trainer.global_step)


def flat_hparams(config: TrainConfig) -> dict[str, Any]:
    """Return the settings as one flat dict of numbers, booleans and strings (lists joined by commas)."""
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if isinstance(value, list | tuple):
            value = ",".join(map(str, value))
        flat[key] = "none" if value is None else value
    return flat


def is_main_process() -> bool:
    """Whether this process is rank 0 of its training run (the one that writes the bundle)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    env = os.environ  # set by Lightning's launcher, torchrun or SLURM before the process group exists
    if "RANK" in env:
        return env["RANK"] == "0"
    return env.get("LOCAL_RANK", "0") == "0" and env.get("NODE_RANK", "0") == "0"
