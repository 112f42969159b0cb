"""Continue training a saved bundle on new data (a profile, some servers, recent history).

The child starts from the parent's weights and reads its inputs through the parent's
:class:`DatasetSpec` (targets, lengths, the moments that standardise the per-window centre and
scale), so nothing is refitted that the weights were trained to read. Server names are never a
model input (the spec uses them only as group ids, re-encoded for any data) and the ``profile``
labels are the contract's, so servers the parent never saw are fine-tuned and forecast through
the same path as known ones.

Whether fine-tuning helped is measured on the new data's validation windows: the parent's loss
before, the fine-tuned weights' loss after. When the fine-tuned weights are not better, the child
keeps the parent's weights and ``training.json`` says so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as lp
import polars as pl
import torch
from pytorch_forecasting.metrics import MASE, MultiLoss

from workbench.errors import ConfigError
from workbench.features import to_model_frame
from workbench.manifest import CALIBRATION_FILE, read_json
from workbench.model.bundle import Bundle
from workbench.model.config import TrainConfig
from workbench.model.loaders import TrainingData
from workbench.model.network import network_from_hparams, network_hparams
from workbench.model.tracking import Tracking
from workbench.model.train import (
    BestWeights,
    fit_band_calibration,
    fit_network,
    run_extras,
    split_point,
    training_record,
)
from workbench.splits import Holdout, split_frame

LR_FACTOR = 0.1  # the child's default learning rate is the parent's times this
DEFAULTS: dict[str, Any] = {"max_epochs": 10, "patience": 2, "max_time_minutes": 15.0}  # `train --from`'s help says so
# What the parent's weights and spec fix: changing any of them would need a new network or new inputs.
FIXED_SETTINGS = (
    "targets",
    "max_encoder_length",
    "min_encoder_length",
    "horizon",
    "quantiles",
    "hidden_size",
    "attention_head_size",
    "hidden_continuous_size",
    "lstm_layers",
    "dropout",
    "randomize_length",
    "loss",
)
RECALIBRATE = "workbench calibrate-incidents --bundle"


def fine_tune_config(parent: TrainConfig, settings: Mapping[str, Any] | None = None) -> TrainConfig:
    """Return the child's settings: the parent's with the fine-tuning defaults and ``settings`` over them.

    The defaults are the parent's learning rate times :data:`LR_FACTOR` and :data:`DEFAULTS`
    (epochs, patience, time bound); ``settings`` may change any setting but :data:`FIXED_SETTINGS`.

    Raises:
        ConfigError: a fixed or unknown setting, or a value out of range.
    """
    given = dict(settings or {})
    fixed = sorted(set(given) & set(FIXED_SETTINGS))
    if fixed:
        raise ConfigError(
            f"fine-tuning keeps the parent's network and inputs, so {', '.join(fixed)} cannot be set; "
            f"fixed: {', '.join(FIXED_SETTINGS)}"
        )
    learning_rate = float(f"{parent.learning_rate * LR_FACTOR:.12g}")
    return parent.replace(**{"learning_rate": learning_rate, **DEFAULTS, **given})


def fine_tune(
    parent: Bundle,
    frame: pl.DataFrame,
    config: TrainConfig,
    *,
    holdout: Holdout | None = None,
    incidents: pl.DataFrame | None = None,
    progress: bool = True,
    tracking: Tracking | None = None,
) -> Bundle:
    """Continue training ``parent`` on a validated contract frame and return the child bundle.

    Args:
        parent: The bundle to start from (left unchanged).
        frame: Contract frame of the new data; its last ``config.validation_steps`` steps are
            the validation windows of early stopping and of the before/after comparison.
        config: The child's settings, e.g. from :func:`fine_tune_config`.
        holdout: Test period and servers of the new data to leave out, as in :func:`train`.
        incidents: Ground truth of the incidents in ``frame``, needed by ``sampling="incidents"``.
        progress: Show Lightning's progress bar.
        tracking: Where the run is logged.

    Returns:
        The child: the parent's spec, the fine-tuned weights (or the parent's, when fine-tuning
        did not lower the validation loss), a band calibration refitted on the new validation
        windows and no incident calibration; ``training.json`` names the parent.

    Raises:
        ConfigError: the settings change what the parent fixes, the new data lacks one of the
            parent's targets or is too short for a training and a validation window.
    """
    started = time.perf_counter()
    _check_same_network(parent.config, config)
    loggers = tracking.loggers() if tracking is not None else []
    lp.seed_everything(config.seed, workers=True, verbose=False)
    given = frame
    if holdout is not None:
        frame = split_frame(frame, holdout)[0]
    check_targets_present(frame, parent.spec.targets)
    model_frame = to_model_frame(frame, parent.spec.targets)
    cutoff = split_point(model_frame, config)
    network = starting_network(parent, config)
    # The parent's spec, not one refitted here. It holds no server label: names are group ids, the only
    # categorical input is the contract's profile, so unseen servers need no unknown (NaN) class.
    data = TrainingData.build(model_frame, parent.spec, network.hparams, config, cutoff, incidents)
    before = validation_loss(network, data)
    best = BestWeights()
    trainer = fit_network(network, data, config, best, progress=progress, loggers=loggers)
    if best.state is not None:
        network.load_state_dict(best.state)
    after = validation_loss(network, data)
    kept = "fine_tuned" if after < before else "parent"
    if kept == "parent":  # like BestWeights: the parent's weights are the best epoch seen
        network.load_state_dict(parent.network.state_dict())
    network = network.to("cpu").eval()
    calibration = fit_band_calibration(network, data)
    info = training_record(frame, config, cutoff, best, trainer, time.perf_counter() - started)
    info["parent"] = parent_record(parent)
    info["fine_tune"] = _fine_tune_record(parent, config, info, len(data.val_windows), before, after, kept)
    info |= run_extras(config, parent.spec, data, trainer, calibration, tracking, loggers, holdout, given)
    hparams = network_hparams(network)
    return Bundle(
        network=network, spec=parent.spec, config=config, hparams=hparams, training=info, calibration=calibration
    )


def check_targets_present(frame: pl.DataFrame, targets: tuple[str, ...]) -> None:
    """Refuse new data that has no value at all of one of the parent's targets.

    Raises:
        ConfigError: naming the targets without values.
    """
    lacking = [t for t in targets if t not in frame.columns or frame[t].null_count() == frame.height]
    if lacking:
        raise ConfigError(
            f"the new data has no {', '.join(lacking)} values, but the parent bundle forecasts "
            f"{', '.join(targets)}: fine-tuning keeps the parent's targets, so the data needs every one"
        )


def starting_network(parent: Bundle, config: TrainConfig) -> Any:
    """Return a copy of the parent's network, in train settings of ``config`` (learning rate, plateau patience)."""
    hparams = {
        **parent.hparams,
        "learning_rate": config.learning_rate,
        "reduce_on_plateau_patience": max(1, config.patience // 2),  # as a network built for training has it
    }
    network = network_from_hparams(hparams, parent.spec, config)
    network.load_state_dict(parent.network.state_dict())
    return network.to("cpu")


def validation_loss(network: Any, data: TrainingData) -> float:
    """Return the training loss over every validation window, averaged per window as Lightning's ``val_loss``.

    Unlike ``val_loss`` it reads all windows whatever ``limit_val_batches`` says, in 32-bit on
    the CPU, so the parent and the child are measured alike.
    """
    network = network.to("cpu").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in data.val_loader:
            prediction = network(x)["prediction"]
            if isinstance(network.loss, MASE | MultiLoss):  # as pytorch-forecasting's own step calls it
                loss = network.loss(
                    prediction, y, encoder_target=x["encoder_target"], encoder_lengths=x["encoder_lengths"]
                )
            else:
                loss = network.loss(prediction, y)
            windows = len(x["decoder_target"])
            total, count = total + float(loss) * windows, count + windows
    return total / count


def parent_record(parent: Bundle) -> dict[str, Any]:
    """Return the parent's name, folder and weights digest, for the child's ``training.json``."""
    info = parent.info()
    return {
        "name": parent.path.name if parent.path is not None else None,
        "path": str(parent.path.resolve()) if parent.path is not None else None,
        "sha256": info.digest,
    }


def _fine_tune_record(
    parent: Bundle,
    config: TrainConfig,
    info: dict[str, Any],
    windows: int,
    before: float,
    after: float,
    kept: str,
) -> dict[str, Any]:
    old, new = parent.config.to_dict(), config.to_dict()
    return {
        "learning_rate": config.learning_rate,
        "parent_learning_rate": parent.config.learning_rate,
        "max_epochs": config.max_epochs,
        "patience": config.patience,
        "max_time_minutes": config.max_time_minutes,
        "changed_settings": {k: {"parent": old[k], "child": new[k]} for k in new if new[k] != old[k]},
        "epochs": info["epochs"],
        "stopped_by": info["stopped_by"],
        "validation_windows": windows,
        "val_loss_parent": before,
        "val_loss_fine_tuned": after,
        "kept": kept,
        "val_loss_measure": "the training loss over every validation window of the new data, on the CPU in 32-bit",
        # The parent's incident probabilities were fitted on its own scores: never carried over.
        "parent_incident_calibration": _had_incident_calibration(parent),
        "incident_calibration": f"not carried over; fit it with `{RECALIBRATE} <this bundle>`",
    }


def _had_incident_calibration(parent: Bundle) -> bool:
    if parent.incidents is not None:
        return True
    file = parent.path / CALIBRATION_FILE if parent.path is not None else None
    return file is not None and file.is_file() and "incidents" in read_json(file)


def _check_same_network(parent: TrainConfig, config: TrainConfig) -> None:
    changed = [k for k in FIXED_SETTINGS if getattr(parent, k) != getattr(config, k)]
    if changed:
        raise ConfigError(f"fine-tuning keeps the parent's network and inputs, but the settings change {changed}")
