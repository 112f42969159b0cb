"""Source units and the factor that turns each into its contract unit.

Sizes follow the binary convention: 1 KB = 1024 bytes and 1 MB = 1024 KB, so
``KB/s / 1024 = MB/s``. Bits use decimal prefixes (1 Mbit = 10**6 bits), as network gear does.
"""

from __future__ import annotations

import math

from workbench import contract
from workbench.errors import ConfigError

MIB = 1024.0 * 1024.0

_PERCENT = {"%": 1.0, "fraction": 100.0}
_FRACTION = {"fraction": 1.0, "%": 0.01}
_LATENCY = {"ms": 1.0, "s": 1000.0, "us": 0.001}
_RATE = {
    "MB/s": 1.0,
    "KB/s": 1 / 1024,
    "B/s": 1 / MIB,
    "GB/s": 1024.0,
    "bytes/min": 1 / (MIB * 60),
    "bytes/5min": 1 / (MIB * 300),
    "KB/5min": 1 / (1024 * 300),
    "bit/s": 1 / (8 * MIB),
    "Mbit/s": 1e6 / (8 * MIB),
}
UNITS: dict[str, dict[str, float]] = {"%": _PERCENT, "fraction": _FRACTION, "ms": _LATENCY, "MB/s": _RATE}
_ALIASES = {"percent": "%", "pct": "%", "bytes/s": "B/s", "kib/s": "KB/s", "mib/s": "MB/s", "gib/s": "GB/s"}


def allowed_units(metric: str) -> list[str]:
    """Return the unit names accepted for a contract metric (its own unit first)."""
    return list(UNITS[contract.METRIC_BY_NAME[metric].unit])


def unit_factor(metric: str, unit: str | float | None) -> float:
    """Return the factor that turns values in ``unit`` into the metric's contract unit.

    Args:
        metric: A contract metric, e.g. ``net_in_mb_s``.
        unit: A unit name (see :func:`allowed_units`; case-insensitive), a number used as the
            factor itself, or ``None`` for the contract unit.

    Raises:
        ConfigError: naming the unit and the allowed ones.
    """
    if unit is None:
        return 1.0
    if isinstance(unit, int | float):
        return _checked_scale(metric, float(unit))
    scale = _as_number(unit)
    if scale is not None:
        return _checked_scale(metric, scale)
    table = UNITS[contract.METRIC_BY_NAME[metric].unit]
    wanted = _ALIASES.get(unit.strip().lower(), unit.strip())
    for name, factor in table.items():
        if name.lower() == wanted.lower():
            return factor
    allowed = ", ".join(table)
    raise ConfigError(f"unknown unit {unit!r} for {metric}; allowed: {allowed}, or a number to multiply by")


def _checked_scale(metric: str, scale: float) -> float:
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"scale for {metric} must be a finite number > 0, got {scale!r}")
    return scale


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
