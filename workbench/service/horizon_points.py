"""A forecast read at a few horizons: the compact part of a result that the history archive keeps.

A published result carries its documents as encoded bytes; the archive wants numbers. A
:class:`HorizonPoints` holds, per forecast server and target, the quantiles at a few steps ahead
(30 min to 8 h) with each server's origin, in one small float32 array, so it crosses the forecast
worker's pipe as one raw blob (never pickled) and costs the request process nothing to build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench import contract as c
from workbench.forecast import Forecast

ARCHIVED_STEPS = (6, 12, 24, 48, 96)  # 30 min, 1 h, 2 h, 4 h, 8 h ahead
BLOB = "horizon_points"


@dataclass(frozen=True, eq=False)
class HorizonPoints:
    """The quantiles of a forecast at a few steps ahead.

    Attributes:
        servers: Forecast servers, in row order.
        targets: Forecast metrics, in column order.
        steps: Steps ahead kept (1: the first forecast step, 5 minutes after the origin).
        levels: Quantile probabilities, in the order of the last axis.
        origin_steps: ``(servers,)`` global step index of each server's last observation.
        values: ``(servers, targets, len(steps), len(levels))`` float32 quantiles.
    """

    servers: tuple[str, ...]
    targets: tuple[str, ...]
    steps: tuple[int, ...]
    levels: tuple[float, ...]
    origin_steps: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, forecast: Forecast, steps: tuple[int, ...] = ARCHIVED_STEPS) -> HorizonPoints:
        """Read ``forecast`` at ``steps`` ahead (steps past its horizon are left out)."""
        kept = tuple(s for s in steps if 1 <= s <= forecast.horizon)
        index = np.asarray(kept, dtype=np.int64) - 1
        return cls(
            servers=tuple(forecast.servers),
            targets=tuple(forecast.targets),
            steps=kept,
            levels=tuple(float(q) for q in forecast.levels),
            origin_steps=np.asarray(forecast.last_step, dtype=np.int64),
            values=np.asarray(forecast.quantiles[:, :, index, :], dtype=np.float32),
        )

    @property
    def quantile_names(self) -> tuple[str, ...]:
        """Column names of the levels, e.g. ``p10``, ``p50``, ``p90``."""
        return tuple(f"p{round(100 * q)}" for q in self.levels)

    def header(self) -> dict[str, Any]:
        """The JSON part for the worker's pipe (the arrays go as :meth:`blobs`)."""
        return {"servers": list(self.servers), "targets": list(self.targets), "steps": list(self.steps),
                "levels": list(self.levels)}  # fmt: skip

    def blobs(self) -> dict[str, np.ndarray]:
        """The arrays for the worker's pipe, as raw buffers."""
        return {BLOB: self.values, BLOB + "_origins": self.origin_steps}

    @classmethod
    def from_wire(cls, header: Mapping[str, Any] | None, blobs: Mapping[str, Any]) -> HorizonPoints | None:
        """Rebuild what :meth:`header` and :meth:`blobs` sent (``None`` when nothing was sent)."""
        if header is None or BLOB not in blobs:
            return None
        return cls(
            servers=tuple(header["servers"]),
            targets=tuple(header["targets"]),
            steps=tuple(int(s) for s in header["steps"]),
            levels=tuple(float(q) for q in header["levels"]),
            origin_steps=np.asarray(blobs[BLOB + "_origins"], dtype=np.int64),
            values=np.asarray(blobs[BLOB], dtype=np.float32),
        )

    def origin_times(self) -> np.ndarray:
        """``(servers,)`` epoch microseconds of each server's origin."""
        return self.origin_steps * (c.STEP_SECONDS * 1_000_000)
