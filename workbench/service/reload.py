"""Hot reload: the daemon's model is replaced by another bundle between two forecasts, no restart.

A reload reads the new bundle's manifest (no torch in the request process), refuses a bundle
whose windows would differ from the running ones (targets, encoder lengths, horizon: the state
folder and every window stay as they are), loads the network where forecasts run (a fresh
worker process, or this process with a thread worker) while the old model keeps serving, and
only then swaps the two between forecasts, carrying the active alerts over. Any failure leaves
the old model serving; the answer says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workbench.manifest import BundleInfo, BundleManifest


class ReloadRefused(Exception):
    """A reload that did not happen; the running model keeps serving.

    Attributes:
        status: The HTTP status to answer: 409 (another reload runs, the bundle does not fit the
            running windows or the alert rule), 422 (not a usable bundle, or it failed to load).
        detail: What went wrong, in words.
        differences: Each way the bundle differs from the running windows.
    """

    def __init__(self, status: int, detail: str, differences: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.differences = differences or []


def shape_differences(running: BundleManifest, new: BundleManifest) -> list[str]:
    """Return how ``new`` would read the windows differently from ``running`` (empty: it fits)."""
    return [
        f"{name}: running {getattr(running, name)!r}, new {getattr(new, name)!r}"
        for name in BundleManifest._fields
        if getattr(running, name) != getattr(new, name)
    ]


def _identity(info: BundleInfo, private: bool) -> dict[str, Any]:
    doc = info.identity()
    doc["path"] = str(info.path) if info.path is not None and private else None
    doc["incident_calibration"] = info.incidents is not None
    return doc


@dataclass
class BundleSlot:
    """The bundle the daemon serves, since when, and how its reloads went.

    Attributes:
        info: The serving bundle.
        loaded_at: When it started serving (Unix seconds).
        reloads: Reloads that swapped the model.
        refused: Reloads refused or failed (the old model kept serving).
        last: The last reload attempt: when, outcome, detail, seconds.
        previous: The bundle served before the last successful reload.
    """

    info: BundleInfo
    loaded_at: float = field(default_factory=time.time)
    reloads: int = 0
    refused: int = 0
    last: dict[str, Any] | None = None
    previous: BundleInfo | None = None

    def swapped(self, info: BundleInfo, seconds: float, carried: int) -> dict[str, Any]:
        """Record a successful reload to ``info`` and return the answer's ``reload`` entry."""
        self.previous, self.info, self.loaded_at = self.info, info, time.time()
        self.reloads += 1
        self.last = self._attempt("reloaded", f"{carried} active alerts carried over", seconds)
        return self.last

    def failed(self, refused: ReloadRefused, seconds: float) -> None:
        """Record a reload that did not happen."""
        self.refused += 1
        self.last = self._attempt("refused", refused.detail, seconds) | {"differences": refused.differences}

    @staticmethod
    def _attempt(outcome: str, detail: str, seconds: float) -> dict[str, Any]:
        return {"at": datetime.now(UTC).isoformat(), "outcome": outcome, "detail": detail, "seconds": round(seconds, 2)}

    def to_json(self, private: bool) -> dict[str, Any]:
        """Return the ``bundle`` entry of ``/status`` (paths only for a reader with the key)."""
        return {
            **_identity(self.info, private),
            "loaded_at": datetime.fromtimestamp(self.loaded_at, UTC).isoformat(),
            "reloads": self.reloads,
            "reloads_refused": self.refused,
            "last_reload": self.last,
            "previous": _identity(self.previous, private) if self.previous is not None else None,
        }
