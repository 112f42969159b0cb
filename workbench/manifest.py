"""A bundle's manifest: what its JSON says (files, contract, targets, lengths), read without torch.

The model stack (torch, Lightning, pytorch-forecasting) takes seconds to import; a caller that
only needs to know whether a folder is a usable bundle and what it forecasts (the command
line before it decides to load the model, a process that never runs the network) reads this.
:func:`workbench.model.load_bundle` runs the same checks before it loads the weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from workbench import contract as c
from workbench.errors import BundleError

if TYPE_CHECKING:
    from workbench.early_warning.calibrator import IncidentCalibration

FILES = ("model.safetensors", "config.json", "dataset.json", "contract.json", "training.json")


class BundleManifest(NamedTuple):
    """What a bundle's ``dataset.json`` says a forecast needs.

    Attributes:
        targets: The metrics it forecasts, in output order.
        min_encoder_length: Steps of history a server needs before it is forecast.
        max_encoder_length: Steps of history the model reads.
        horizon: Steps it forecasts.
    """

    targets: tuple[str, ...]
    min_encoder_length: int
    max_encoder_length: int
    horizon: int


def check_bundle_folder(root: Path) -> None:
    """Check that ``root`` holds every bundle file and was trained on the running data contract.

    Raises:
        BundleError: a file is missing or the stored contract differs from the running one.
    """
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise BundleError(f"{root}: not a model bundle, missing {', '.join(missing)}")
    diffs = c.contract_differences(read_json(root / "contract.json"))
    if diffs:
        raise BundleError(f"{root}: trained on a different data contract:\n  " + "\n  ".join(diffs))


def read_manifest(root: str | Path) -> BundleManifest:
    """Check ``root`` is a bundle of this contract and read its targets and lengths.

    Raises:
        BundleError: as :func:`workbench.model.load_bundle` would, for a missing file, another
            data contract or a malformed ``dataset.json``.
    """
    folder = Path(root)
    check_bundle_folder(folder)
    spec = read_json(folder / "dataset.json")
    try:
        targets = tuple(c.check_metric_names(spec["targets"], what="bundle target"))
        lengths = (int(spec[k]) for k in ("min_encoder_length", "max_encoder_length", "horizon"))
        return BundleManifest(targets, *lengths)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{folder / 'dataset.json'}: malformed: {exc!r}") from exc


def read_json(file: Path) -> dict[str, Any]:
    """Read one of a bundle's JSON objects.

    Raises:
        BundleError: the file is unreadable, not JSON or not an object.
    """
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{file}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{file}: expected a JSON object")
    return data


CALIBRATION_FILE = "calibration.json"  # optional: bundles trained before it have uncalibrated bands


@dataclass(frozen=True)
class BundleInfo:
    """What a process that never runs the network needs of a bundle: shape, identity, calibration.

    Attributes:
        path: The bundle folder (``None`` for a bundle that only lives in memory).
        manifest: Targets and lengths (``dataset.json``).
        incidents: The incident calibration (``calibration.json``), if fitted.
        digest: SHA-256 of the weights file (of the description, for an in-memory bundle).
    """

    path: Path | None
    manifest: BundleManifest
    incidents: IncidentCalibration | None
    digest: str

    @property
    def targets(self) -> tuple[str, ...]:
        """The metrics the model forecasts, in output order."""
        return self.manifest.targets

    def identity(self) -> dict[str, Any]:
        """Return what identifies the bundle's windows: weights digest, targets and window length."""
        return {
            "name": self.path.name if self.path is not None else None,
            "sha256": self.digest,
            "targets": list(self.targets),
            "max_encoder_length": self.manifest.max_encoder_length,
        }


def read_info(root: str | Path, *, incidents: bool = True) -> BundleInfo:
    """Read a bundle's :class:`BundleInfo` from its files, without torch.

    Raises:
        BundleError: as :func:`read_manifest`, or for a malformed ``calibration.json``.
    """
    folder = Path(root)
    manifest = read_manifest(folder)
    calibration = None
    if incidents and (folder / CALIBRATION_FILE).is_file():
        from workbench.early_warning.calibrator import IncidentCalibration

        stored = read_json(folder / CALIBRATION_FILE)
        if "incidents" in stored:
            calibration = IncidentCalibration.from_json(stored["incidents"])
    return BundleInfo(folder, manifest, calibration, weights_digest(folder / FILES[0]))


def weights_digest(file: Path) -> str:
    """Return the SHA-256 of a weights file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
