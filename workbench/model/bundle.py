"""The model bundle: a folder of safetensors weights and JSON, loaded without pickle.

Layout: ``model.safetensors`` (weights), ``config.json`` (training settings and network
hyper-parameters), ``dataset.json`` (:class:`DatasetSpec`), ``contract.json`` (the contract it
was trained on), ``training.json`` (data fingerprint, dates, losses, library versions) and,
when fitted, ``calibration.json``: section ``bands`` (:class:`BandCalibration` of the p10–p90
band, fitted by training) and section ``incidents`` (:class:`IncidentCalibration`, the incident
probabilities fitted on validation fleets by ``workbench calibrate-incidents``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_forecasting import TemporalFusionTransformer
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from workbench import contract as c
from workbench.early_warning.calibrator import IncidentCalibration
from workbench.errors import BundleError
from workbench.manifest import (
    CALIBRATION_FILE,
    BundleInfo,
    BundleManifest,
    check_bundle_folder,
    read_json,
    weights_digest,
)
from workbench.model.calibration import CALIBRATION_VERSION, BandCalibration
from workbench.model.config import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.network import network_from_hparams

BUNDLE_FORMAT = 1


@dataclass
class Bundle:
    """A trained network with everything needed to feed it and to know where it came from.

    Attributes:
        network: The TFT, in eval mode.
        spec: How its inputs are built.
        config: The settings it was trained with.
        hparams: The network's constructor arguments (plain JSON).
        training: The training record.
        path: Folder it was loaded from or saved to, if any.
        calibration: The band calibration applied to every forecast, if any.
        incidents: Incident probabilities learned from ground truth (``None``: the bundle's
            probabilities are uncalibrated, and every figure built on them says so).
    """

    network: TemporalFusionTransformer
    spec: DatasetSpec
    config: TrainConfig
    hparams: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    calibration: BandCalibration | None = None
    incidents: IncidentCalibration | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """The metrics the model forecasts, in output order."""
        return self.spec.targets

    def info(self) -> BundleInfo:
        """Return what a process that never runs the network needs of this bundle."""
        spec = self.spec
        manifest = BundleManifest(spec.targets, spec.min_encoder_length, spec.max_encoder_length, spec.horizon)
        weights = self.path / "model.safetensors" if self.path is not None else None
        if weights is not None and weights.is_file():
            digest = weights_digest(weights)
        else:  # an in-memory bundle: its description stands in for the weights
            described = json.dumps([spec.to_json(), self.hparams], sort_keys=True, default=str).encode()
            digest = hashlib.sha256(described).hexdigest()
        return BundleInfo(self.path, manifest, self.incidents, digest)


def library_versions() -> dict[str, str]:
    """Return the versions of the libraries that shape a bundle."""
    names = ("torch", "pytorch-forecasting", "lightning", "safetensors", "polars")
    return {n: importlib.metadata.version(n) for n in names}


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write ``bundle`` as a folder of safetensors + JSON and return the folder."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # save_model de-duplicates the tensors the TFT shares between its variable-selection blocks.
    save_model(bundle.network, str(out / "model.safetensors"), metadata={"bundle_format": str(BUNDLE_FORMAT)})
    _write_json(
        out / "config.json",
        {"bundle_format": BUNDLE_FORMAT, "train": bundle.config.to_dict(), "network": bundle.hparams},
    )
    _write_json(out / "dataset.json", bundle.spec.to_json())
    _write_json(out / "contract.json", c.contract_json())
    _write_json(out / "training.json", bundle.training)
    save_calibration(bundle, out)
    bundle.path = out
    return out


def save_calibration(bundle: Bundle, path: str | Path) -> Path:
    """Write ``calibration.json`` of ``bundle`` into folder ``path`` (removed when it has none)."""
    file = Path(path) / CALIBRATION_FILE
    sections: dict[str, Any] = {}
    if bundle.calibration is not None:
        sections.update(bundle.calibration.to_json())
    if bundle.incidents is not None:
        sections["incidents"] = bundle.incidents.to_json()
    if sections:
        _write_json(file, {"version": CALIBRATION_VERSION, **sections})
    else:
        file.unlink(missing_ok=True)
    return file


def load_bundle(
    path: str | Path,
    *,
    targets: Sequence[str] | None = None,
    device: str | None = None,
    incidents: bool = True,
) -> Bundle:
    """Load a bundle written by :func:`save_bundle`, refusing any mismatch with a clear error.

    Args:
        path: The bundle folder.
        targets: When given, the metrics the caller expects the model to forecast.
        device: Where to put the network (``cpu``, ``cuda``, ...); CUDA when present by default.
        incidents: Read the incident calibration (``False``: leave it out, e.g. to fit a new one
            over a stale section).

    Raises:
        BundleError: a file is missing or malformed, the stored contract differs from the
            running one, the targets differ, or the weights do not fit the network.
    """
    root = Path(path)
    check_bundle_folder(root)
    spec = DatasetSpec.from_json(read_json(root / "dataset.json"))
    config_json = read_json(root / "config.json")
    config = TrainConfig.from_dict(config_json.get("train", {}))
    _check_targets(root, spec, config, targets)
    network = network_from_hparams(config_json.get("network", {}), spec, config)
    _load_weights(network, root / "model.safetensors")
    target_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    network = network.to(target_device).eval()
    training = read_json(root / "training.json")
    calibration, incident_calibration = None, None
    if (root / CALIBRATION_FILE).is_file():
        stored = read_json(root / CALIBRATION_FILE)
        if "bands" in stored:
            calibration = BandCalibration.from_json(stored, spec.targets, spec.horizon)
        if incidents and "incidents" in stored:
            incident_calibration = IncidentCalibration.from_json(stored["incidents"])
    return Bundle(network, spec, config, config_json["network"], training, root, calibration, incident_calibration)


def _check_targets(root: Path, spec: DatasetSpec, config: TrainConfig, expected: Sequence[str] | None) -> None:
    if tuple(config.targets) != spec.targets:
        raise BundleError(
            f"{root}: config.json targets {list(config.targets)} != dataset.json targets {list(spec.targets)}"
        )
    c.check_metric_names(spec.targets, what="bundle target")
    if expected is not None and tuple(expected) != spec.targets:
        extra = sorted(set(spec.targets) - set(expected))
        lacking = sorted(set(expected) - set(spec.targets))
        raise BundleError(
            f"{root}: model targets {list(spec.targets)} differ from the expected {list(expected)}"
            f" (model only: {extra}, expected only: {lacking})"
        )


def _load_weights(network: torch.nn.Module, file: Path) -> None:
    try:
        missing, unexpected = load_model(network, str(file), strict=False)
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{file}: unreadable weights: {exc}") from exc
    except RuntimeError as exc:
        raise BundleError(f"{file}: weights do not fit the network described by config.json: {exc}") from exc
    if missing or unexpected:
        raise BundleError(
            f"{file}: weights do not fit the network described by config.json "
            f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})"
        )


def _write_json(file: Path, data: dict[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
