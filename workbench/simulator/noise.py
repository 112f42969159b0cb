"""Seeded noise for the simulator, produced one day at a time.

Each day draws from its own child generator ``np.random.default_rng([seed, stream, day])`` and the
AR(1) channels carry their state across day boundaries, so a span generated in day chunks equals
the same span generated in any other chunking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from workbench import contract

# Smooth noise channels and their AR(1) coefficient per 5-minute step (0.95 ~ 100 min memory).
AR_CHANNELS: Mapping[str, float] = {"load": 0.95, "mem": 0.995, "io": 0.9, "net": 0.9}
_INIT_STREAM = 0
_DAY_STREAM = 1


@dataclass(frozen=True)
class DayNoise:
    """Standard-normal noise for one day, each array of shape ``(steps_per_day, servers)``.

    Attributes:
        ar: Smooth unit-variance AR(1) noise per channel of :data:`AR_CHANNELS`.
        white: Independent noise per contract metric.
    """

    ar: Mapping[str, np.ndarray]
    white: Mapping[str, np.ndarray]


class NoiseStream:
    """Noise for consecutive days of one fleet, reproducible from ``seed``.

    Args:
        seed: Non-negative seed.
        n_servers: Number of servers (columns of every array).
        steps_per_day: Rows of every array.
    """

    def __init__(self, seed: int, n_servers: int, steps_per_day: int) -> None:
        self._seed = seed
        self._shape = (steps_per_day, n_servers)
        self._phi = np.array(list(AR_CHANNELS.values()))[:, None]
        self._innovation_scale = np.sqrt(1.0 - self._phi**2)
        init = np.random.default_rng([seed, _INIT_STREAM])
        self._state = init.standard_normal((len(AR_CHANNELS), n_servers))  # stationary start
        self._next_day = 0

    def day(self, index: int) -> DayNoise:
        """Return the noise of day ``index``; days must be asked for in order 0, 1, 2, ...

        Raises:
            ValueError: when a day is skipped or repeated (the AR state would be wrong).
        """
        if index != self._next_day:
            raise ValueError(f"noise days must be consumed in order: expected day {self._next_day}, got {index}")
        self._next_day += 1
        rng = np.random.default_rng([self._seed, _DAY_STREAM, index])
        n_ar = len(AR_CHANNELS)
        draws = rng.standard_normal((n_ar + len(contract.METRIC_NAMES), *self._shape))
        smooth = self._ar(draws[:n_ar])
        return DayNoise(
            ar=dict(zip(AR_CHANNELS, smooth, strict=True)),
            white=dict(zip(contract.METRIC_NAMES, draws[n_ar:], strict=True)),
        )

    def _ar(self, innovations: np.ndarray) -> np.ndarray:
        """Run the AR(1) recursion along time for all channels and servers at once."""
        out = np.empty_like(innovations)
        state = self._state
        for step in range(innovations.shape[1]):
            state = self._phi * state + self._innovation_scale * innovations[:, step]
            out[:, step] = state
        self._state = state
        return out
