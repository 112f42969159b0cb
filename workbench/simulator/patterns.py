"""Vectorised seasonal shapes of the simulated load.

Each is a function of epoch seconds ``t`` (shape ``(T,)``) and per-server parameters (shape
``(S,)``) that returns a ``(T, S)`` array.
"""

from __future__ import annotations

import numpy as np

SECONDS_PER_HOUR = 3_600
SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0.


def hour_of_day(t: np.ndarray) -> np.ndarray:
    """Return the UTC hour of day in ``[0, 24)`` as floats.

    Args:
        t: Epoch seconds.
    """
    return np.mod(t, SECONDS_PER_DAY) / SECONDS_PER_HOUR


def day_of_week(t: np.ndarray) -> np.ndarray:
    """Return the UTC day of week, Monday = 0 ... Sunday = 6.

    Args:
        t: Epoch seconds.
    """
    return (np.floor_divide(t, SECONDS_PER_DAY).astype(np.int64) + _EPOCH_WEEKDAY) % 7


def diurnal(t: np.ndarray, peak_hour: np.ndarray, amplitude: np.ndarray, sharpness: np.ndarray) -> np.ndarray:
    """Return a daily load multiplier: ``1 + amplitude`` at the peak hour, ``~1 - amplitude`` at the trough.

    The shape is a von Mises bump around ``peak_hour``: a broad business-hours hump for small
    ``sharpness``, a short batch window (e.g. a nightly ETL) for large ``sharpness``.

    Args:
        t: Epoch seconds, shape ``(T,)``.
        peak_hour: UTC hour of the peak per server, shape ``(S,)``.
        amplitude: Relative swing per server, in ``[0, 1)``.
        sharpness: Concentration of the bump per server (> 0).
    """
    angle = (2 * np.pi / 24) * (hour_of_day(t)[:, None] - peak_hour[None, :])
    bump = np.exp(sharpness[None, :] * (np.cos(angle) - 1.0))
    return 1.0 - amplitude[None, :] + 2.0 * amplitude[None, :] * bump


def weekly(t: np.ndarray, weekend_factor: np.ndarray) -> np.ndarray:
    """Return a weekly load multiplier: 1 on weekdays, ``weekend_factor`` on Saturday and Sunday.

    Args:
        t: Epoch seconds, shape ``(T,)``.
        weekend_factor: Weekend multiplier per server, shape ``(S,)``.
    """
    weekend = day_of_week(t) >= 5
    return np.where(weekend[:, None], weekend_factor[None, :], 1.0)


def sawtooth(t: np.ndarray, period_s: np.ndarray, phase_s: np.ndarray) -> np.ndarray:
    """Return the position within a repeating cycle, rising from 0 to 1 then dropping back.

    Args:
        t: Epoch seconds, shape ``(T,)``.
        period_s: Cycle length per server, seconds.
        phase_s: Cycle offset per server, seconds.
    """
    return np.mod(t[:, None] - phase_s[None, :], period_s[None, :]) / period_s[None, :]
