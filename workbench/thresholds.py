"""Warning and critical thresholds per metric, overridable per profile.

The alert rules, the simulator's definition of an incident's critical onset and the dashboard
all read the same table, so that "critical" means one thing across the workbench.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from workbench import contract as c
from workbench.errors import ConfigError


@dataclass(frozen=True)
class Level:
    """The two thresholds of one metric, in the metric's unit.

    Attributes:
        warning: Value at which a warning is raised.
        critical: Value at which the situation is critical (an incident's onset).
    """

    warning: float
    critical: float


DEFAULT_LEVELS: Mapping[str, Level] = {
    "cpu_pct": Level(80.0, 95.0),
    "mem_pct": Level(85.0, 95.0),
    "disk_pct": Level(85.0, 95.0),
    "latency_ms": Level(200.0, 500.0),
    "error_rate": Level(0.02, 0.05),
}
DEFAULT_PROFILE_LEVELS: Mapping[str, Mapping[str, Level]] = {
    "database": {"latency_ms": Level(50.0, 150.0)},
    "ml_compute": {"cpu_pct": Level(92.0, 98.0)},  # batch jobs run hot by design
}


@dataclass(frozen=True)
class Thresholds:
    """Thresholds per metric with per-profile overrides; metrics without an entry never alert.

    Attributes:
        levels: Default level per metric.
        profiles: Per-profile replacements of some metrics' levels.
    """

    levels: Mapping[str, Level] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    profiles: Mapping[str, Mapping[str, Level]] = field(
        default_factory=lambda: {p: dict(t) for p, t in DEFAULT_PROFILE_LEVELS.items()}
    )

    def __post_init__(self) -> None:
        for where, table in [("levels", self.levels), *[(f"profiles.{p}", t) for p, t in self.profiles.items()]]:
            for metric, level in table.items():
                _check_level(where, metric, level)
        unknown = sorted(set(self.profiles) - set(c.PROFILES))
        if unknown:
            raise ConfigError(f"thresholds: unknown profile(s) {unknown}; allowed: {', '.join(c.PROFILES)}")

    def for_profile(self, profile: str) -> dict[str, Level]:
        """Return the levels that apply to a server of ``profile``."""
        return {**self.levels, **self.profiles.get(profile, {})}

    def level(self, metric: str, profile: str = c.DEFAULT_PROFILE) -> Level | None:
        """Return the level of ``metric`` for ``profile``, or ``None`` when it never alerts."""
        return self.for_profile(profile).get(metric)

    def array(self, profiles: Sequence[str], metrics: Sequence[str]) -> np.ndarray:
        """Return ``(servers, metrics, 2)`` warning and critical levels for each server's profile.

        Metrics without a level for a profile hold NaN (they never alert).
        """
        names, inverse = np.unique(np.asarray(profiles, dtype=str), return_inverse=True)
        table = np.full((len(names), len(metrics), 2), np.nan)
        for p, profile in enumerate(names):
            levels = self.for_profile(str(profile))
            for j, metric in enumerate(metrics):
                if metric in levels:
                    table[p, j] = (levels[metric].warning, levels[metric].critical)
        return table[inverse.reshape(-1)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        """Build from ``{"levels": {metric: {warning, critical}}, "profiles": {profile: {...}}}``.

        Missing sections keep the defaults; a given metric replaces the default of that metric
        only (for a profile too: other metrics keep their default per-profile levels).
        """
        unknown = sorted(set(data) - {"levels", "profiles"})
        if unknown:
            raise ConfigError(f"thresholds: unknown section(s) {unknown}; allowed: levels, profiles")
        levels = {**DEFAULT_LEVELS, **_levels("levels", data.get("levels", {}))}
        profiles = {p: dict(t) for p, t in DEFAULT_PROFILE_LEVELS.items()}
        for profile, table in data.get("profiles", {}).items():
            profiles.setdefault(profile, {}).update(_levels(f"profiles.{profile}", table))
        return cls(levels, profiles)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Thresholds:
        """Load thresholds from a YAML file shaped like :meth:`from_dict`'s argument."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def to_dict(self) -> dict[str, Any]:
        """Return the thresholds as plain data (the shape :meth:`from_dict` reads)."""
        return {
            "levels": {m: vars(lv) for m, lv in self.levels.items()},
            "profiles": {p: {m: vars(lv) for m, lv in t.items()} for p, t in self.profiles.items()},
        }


def _levels(where: str, table: Mapping[str, Any]) -> dict[str, Level]:
    out = {}
    for metric, value in table.items():
        if not isinstance(value, Mapping) or set(value) != {"warning", "critical"}:
            raise ConfigError(f"thresholds {where}.{metric}: expected {{warning: number, critical: number}}")
        out[metric] = Level(float(value["warning"]), float(value["critical"]))
    return out


def _check_level(where: str, metric: str, level: Level) -> None:
    if metric not in c.METRIC_BY_NAME:
        raise ConfigError(f"thresholds {where}: unknown metric {metric!r}; allowed: {', '.join(c.METRIC_NAMES)}")
    m = c.METRIC_BY_NAME[metric]
    if not (m.contains(level.warning) and m.contains(level.critical)):
        raise ConfigError(f"thresholds {where}.{metric}: values must lie within {m.allowed()} {m.unit}")
    if m.high_is_bad and not level.warning < level.critical:
        raise ConfigError(
            f"thresholds {where}.{metric}: warning {level.warning} must be below critical {level.critical}"
        )
