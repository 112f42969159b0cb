"""Conformal calibration of the p10–p90 band, fitted on validation windows and stored as JSON.

A quantile network trained to convergence fits its training windows' spread, and its band is
usually too narrow on servers and hours it never saw (the reference model covered 70 % instead
of 80 % on the held-out split). Conformalized quantile regression (Romano et al., 2019) widens
or narrows each side of the band by what validation windows the network did not train on
say, scaled by the band's own half-width so that a server with a wide band stays wider than a
quiet one:

``p10' = p50 - a·(p50 - p10)`` and ``p90' = p50 + b·(p90 - p50)``

with ``a`` the 90th percentile of ``(p50 - y) / (p50 - p10)`` over validation windows (so
that 10 % of actual values fall below ``p10'``) and ``b`` likewise above, per target and
horizon step, pooled over a few neighbouring steps and capped at :data:`MAX_FACTOR`. Stored
in the bundle as ``calibration.json``; with fewer than :data:`MIN_WINDOWS` validation windows
none is fitted and the bundle's bands stay as the network gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench import contract as c
from workbench.errors import BundleError

CALIBRATION_VERSION = 1
NEIGHBOURS = 6  # horizon steps pooled on each side of a step
MIN_WINDOWS = 30  # fewer validation windows than this fit no calibration
MAX_FACTOR = 5.0  # a band more than 5x too narrow is a model to retrain, not to stretch
_TINY = 1e-6


@dataclass(frozen=True)
class BandCalibration:
    """Per target and horizon step, the factors that scale each half of the p10–p90 band.

    Attributes:
        targets: Target metrics, in the network's order.
        lower: ``(targets, horizon)`` factor of ``p50 - p10``.
        upper: ``(targets, horizon)`` factor of ``p90 - p50``.
        record: How the factors were fitted (windows, coverage before and after), as JSON.
    """

    targets: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    record: dict[str, Any]

    @classmethod
    def fit(
        cls,
        targets: Sequence[str],
        quantiles: np.ndarray,
        actual: np.ndarray,
        *,
        levels: tuple[float, float] = (c.QUANTILE_LEVELS[0], c.QUANTILE_LEVELS[-1]),
    ) -> BandCalibration:
        """Fit the factors on validation forecasts.

        Args:
            targets: Target metrics.
            quantiles: ``(windows, targets, horizon, 3)`` p10/p50/p90 forecasts.
            actual: ``(windows, targets, horizon)`` what happened.
            levels: The band's quantile levels.
        """
        quantiles = np.sort(quantiles, axis=-1)  # a crossed band is read in order, as it is served
        p10, p50, p90 = quantiles[..., 0], quantiles[..., 1], quantiles[..., 2]
        below = (p50 - actual) / np.maximum(p50 - p10, _TINY)  # > 1: under p10
        above = (actual - p50) / np.maximum(p90 - p50, _TINY)
        lower = _pooled_quantile(below, 1.0 - levels[0])
        upper = _pooled_quantile(above, levels[1])
        fitted = cls(tuple(targets), lower, upper, {})
        before = _coverage(quantiles, actual)
        after = _coverage(fitted.apply(quantiles), actual)
        record = {
            "method": "conformalized quantile regression, scaled by each half-width of the band",
            "levels": list(levels),
            "windows": int(quantiles.shape[0]),
            "neighbouring_steps_pooled": NEIGHBOURS,
            "coverage_before": round(before, 4),
            "coverage_after": round(after, 4),
        }
        return cls(tuple(targets), lower, upper, record)

    def apply(self, quantiles: np.ndarray) -> np.ndarray:
        """Return ``(servers, targets, horizon, 3)`` quantiles with the band rescaled around p50."""
        if quantiles.shape[1:3] != self.lower.shape:
            raise ValueError(f"calibration is for {self.lower.shape} targets x steps, got {quantiles.shape[1:3]}")
        quantiles = np.sort(quantiles, axis=-1)
        out = quantiles.copy()
        p50 = quantiles[..., 1]
        out[..., 0] = p50 - self.lower * (p50 - quantiles[..., 0])
        out[..., 2] = p50 + self.upper * (quantiles[..., 2] - p50)
        return out

    def to_json(self) -> dict[str, Any]:
        """Return the calibration as plain JSON data."""
        return {
            "version": CALIBRATION_VERSION,
            "bands": {
                "targets": list(self.targets),
                "lower": np.round(self.lower, 6).tolist(),
                "upper": np.round(self.upper, 6).tolist(),
                "record": self.record,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], targets: Sequence[str], horizon: int) -> BandCalibration:
        """Read :meth:`to_json` output, checking it fits the bundle's targets and horizon.

        Raises:
            BundleError: when the file is malformed or made for other targets or another horizon.
        """
        if data.get("version") != CALIBRATION_VERSION:
            raise BundleError(
                f"calibration.json: version {data.get('version')!r}, this code reads {CALIBRATION_VERSION}"
            )
        try:
            bands = data["bands"]
            lower = np.asarray(bands["lower"], dtype=np.float64)
            upper = np.asarray(bands["upper"], dtype=np.float64)
            stored = tuple(bands["targets"])
            record = dict(bands.get("record", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"calibration.json is malformed: {exc!r}") from exc
        shape = (len(targets), horizon)
        if stored != tuple(targets) or lower.shape != shape or upper.shape != shape:
            raise BundleError(f"calibration.json is for targets {list(stored)} x {lower.shape}, the model has {shape}")
        if not (np.isfinite(lower).all() and np.isfinite(upper).all() and (lower >= 0).all() and (upper >= 0).all()):
            raise BundleError("calibration.json: factors must be finite and >= 0")
        return cls(stored, lower, upper, record)


def _pooled_quantile(scores: np.ndarray, level: float) -> np.ndarray:
    """Per target and step, the ``level`` quantile of the scores of that step and its neighbours."""
    _, m, h = scores.shape
    out = np.empty((m, h))
    for step in range(h):
        lo, hi = max(0, step - NEIGHBOURS), min(h, step + NEIGHBOURS + 1)
        out[:, step] = np.quantile(scores[:, :, lo:hi].transpose(1, 0, 2).reshape(m, -1), level, axis=1)
    return np.clip(out, 0.0, MAX_FACTOR)


def _coverage(quantiles: np.ndarray, actual: np.ndarray) -> float:
    return float(((actual >= quantiles[..., 0]) & (actual <= quantiles[..., 2])).mean())
