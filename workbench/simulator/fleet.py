"""A simulated fleet: server names, profiles and per-server parameters drawn from one seed.

Profile-level defaults live in :data:`workbench.simulator.profiles.PROFILE_DEFAULTS`;
:func:`make_fleet` spreads each server around them with ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator.profiles import CPU, DISK, DISK_IO, MEM, PROFILE_DEFAULTS

_PREFIX_OF: dict[str, str] = {profile: prefix for prefix, profile in contract.PROFILE_PREFIXES.items()}


@dataclass(frozen=True, eq=False)
class Fleet:
    """Servers and their parameters; every array has one entry per server, in name order.

    Attributes:
        seed: Seed the parameters were drawn from.
        names: Server names, sorted.
        profiles: Contract profile of each server.
        levels: Per metric, each server's typical value at nominal load.
        diurnal_amplitude: Relative daily swing of load.
        diurnal_sharpness: Narrowness of the daily peak.
        peak_hour: UTC hour of the daily peak.
        weekend_factor: Load multiplier on weekends.
        noise: Relative noise level.
        disk_fill_per_day: Filesystem growth, percentage points per day.
        cleanup_days: Days between filesystem cleanups.
        cleanup_phase_days: Offset of the cleanup cycle, days.
        gc_period_s: Period of the memory sawtooth (garbage collection), seconds.
        gc_amplitude: Height of the memory sawtooth, percentage points.
        gc_phase_s: Offset of the memory sawtooth, seconds.
        io_capacity: Disk throughput at which latency saturates, MB/s.
    """

    seed: int
    names: tuple[str, ...]
    profiles: tuple[str, ...]
    levels: Mapping[str, np.ndarray]
    diurnal_amplitude: np.ndarray
    diurnal_sharpness: np.ndarray
    peak_hour: np.ndarray
    weekend_factor: np.ndarray
    noise: np.ndarray
    disk_fill_per_day: np.ndarray
    cleanup_days: np.ndarray
    cleanup_phase_days: np.ndarray
    gc_period_s: np.ndarray
    gc_amplitude: np.ndarray
    gc_phase_s: np.ndarray
    io_capacity: np.ndarray

    def __post_init__(self) -> None:
        arrays = [getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)]
        for array in [*arrays, *self.levels.values()]:
            if array.shape != (self.size,):
                raise ConfigError(f"Fleet arrays need shape ({self.size},), got {array.shape}")
            array.flags.writeable = False

    @property
    def size(self) -> int:
        """Number of servers."""
        return len(self.names)


def profile_counts(n_servers: int) -> dict[str, int]:
    """Return how many servers of each profile a fleet of ``n_servers`` has (deterministic).

    Every profile is present once ``n_servers >= len(PROFILES)``; smaller fleets take the
    heaviest profiles. The rest is shared by weight with the largest-remainder method.
    """
    weights = np.array([PROFILE_DEFAULTS[p].weight for p in contract.PROFILES])
    n_profiles = len(contract.PROFILES)
    if n_servers < n_profiles:
        counts = np.zeros(n_profiles, dtype=int)
        counts[np.argsort(-weights, kind="stable")[:n_servers]] = 1
    else:
        counts = 1 + _largest_remainder(n_servers - n_profiles, weights)
    return {p: int(c) for p, c in zip(contract.PROFILES, counts, strict=True)}


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(int)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def server_names(counts: Mapping[str, int]) -> list[tuple[str, str]]:
    """Return ``(name, profile)`` pairs sorted by name, e.g. ``("ppdb001", "database")``."""
    pairs = []
    for profile, count in counts.items():
        digits = max(PROFILE_DEFAULTS[profile].digits, len(str(count)))
        pairs += [(f"{_PREFIX_OF[profile]}{i:0{digits}d}", profile) for i in range(1, count + 1)]
    return sorted(pairs)


def make_fleet(n_servers: int, seed: int) -> Fleet:
    """Build a fleet of ``n_servers`` across the contract profiles, parameters drawn from ``seed``.

    Args:
        n_servers: Number of servers (>= 1).
        seed: Non-negative seed; the same seed gives the same fleet.

    Raises:
        ConfigError: when ``n_servers`` or ``seed`` is out of range.
    """
    if n_servers < 1:
        raise ConfigError(f"n_servers must be >= 1, got {n_servers}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    pairs = server_names(profile_counts(n_servers))
    profiles = tuple(p for _, p in pairs)
    rng = np.random.default_rng(seed)
    return Fleet(
        seed=seed,
        names=tuple(name for name, _ in pairs),
        profiles=profiles,
        **_draw_parameters(profiles, rng),
    )


def _draw_parameters(profiles: tuple[str, ...], rng: np.random.Generator) -> dict[str, Any]:
    """Spread each server around its profile's defaults (the draw order is part of what a seed means)."""
    n = len(profiles)
    index = np.array([contract.PROFILES.index(p) for p in profiles], dtype=np.intp)
    table = [PROFILE_DEFAULTS[p] for p in contract.PROFILES]

    def col(attr: str) -> np.ndarray:
        return np.array([getattr(d, attr) for d in table], dtype=float)[index]

    levels = {}
    for m in contract.METRIC_NAMES:
        base = np.array([d.levels.by_metric()[m] for d in table])[index]
        spread = 0.15 if contract.METRIC_BY_NAME[m].unit == "%" else 0.3  # percentages vary less
        levels[m] = base * rng.lognormal(0.0, spread, n)
    levels[CPU] = np.minimum(levels[CPU], 80.0)
    levels[MEM] = np.minimum(levels[MEM], 78.0)
    levels[DISK] = np.minimum(levels[DISK], 75.0)
    cleanup_days = col("cleanup_days") * rng.uniform(0.7, 1.3, n)
    return {
        "levels": levels,
        "diurnal_amplitude": np.clip(col("diurnal_amplitude") * rng.uniform(0.75, 1.25, n), 0.0, 0.9),
        "diurnal_sharpness": col("diurnal_sharpness") * rng.uniform(0.8, 1.2, n),
        "peak_hour": (col("peak_hour") + rng.normal(0.0, 1.0, n)) % 24,
        "weekend_factor": np.clip(col("weekend_factor") + rng.normal(0.0, 0.05, n), 0.2, 1.2),
        "noise": col("noise") * rng.lognormal(0.0, 0.2, n),
        "disk_fill_per_day": col("disk_fill_per_day") * rng.uniform(0.5, 1.5, n),
        "cleanup_days": cleanup_days,
        "cleanup_phase_days": rng.uniform(0.0, 1.0, n) * cleanup_days,
        "gc_period_s": rng.uniform(1800.0, 7200.0, n),
        "gc_amplitude": rng.uniform(0.5, 4.0, n),
        "gc_phase_s": rng.uniform(0.0, 7200.0, n),
        "io_capacity": levels[DISK_IO] * rng.uniform(3.0, 6.0, n),
    }
