"""Scenarios: how often, and how hard, incidents hit a chosen subset of the fleet.

A :class:`Scenario` multiplies the incident rates of its affected servers and makes their
incidents more intense (faster precursors, longer critical phases, larger side effects). The
affected subset is drawn from the fleet's seed, so it is the same in batch and stream mode, and
the subsets are nested: every server affected by ``degrading`` is also affected by ``critical``.
A :class:`ScenarioSchedule` says which scenario holds from which step on (the stream switches).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from workbench.errors import ConfigError

MAX_RATE_MULTIPLIER = 20.0  # candidate incidents are drawn at this multiple of the base rates
MAX_INTENSITY = 3.0
_AFFECTED_STREAM = 5


@dataclass(frozen=True)
class Scenario:
    """Incident rates and intensities for the affected part of the fleet.

    Attributes:
        name: Label reported in status and in the ground-truth table.
        affected_fraction: Share of the fleet affected, in ``[0, 1]`` (at least one server when > 0).
        rate_multiplier: Incident rate multiplier on affected servers, in ``[0, MAX_RATE_MULTIPLIER]``.
        intensity: Severity on affected servers, in ``[1, MAX_INTENSITY]`` (1 = as in ``healthy``).
    """

    name: str
    affected_fraction: float = 0.0
    rate_multiplier: float = 1.0
    intensity: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name must not be empty")
        if not 0.0 <= self.affected_fraction <= 1.0:
            problems.append(f"affected_fraction={self.affected_fraction!r} must lie in [0, 1]")
        if not 0.0 <= self.rate_multiplier <= MAX_RATE_MULTIPLIER:
            problems.append(f"rate_multiplier={self.rate_multiplier!r} must lie in [0, {MAX_RATE_MULTIPLIER:g}]")
        if not 1.0 <= self.intensity <= MAX_INTENSITY:
            problems.append(f"intensity={self.intensity!r} must lie in [1, {MAX_INTENSITY:g}]")
        if problems:
            raise ConfigError(f"scenario {self.name!r}: " + "; ".join(problems))

    @classmethod
    def named(cls, name: str) -> Scenario:
        """Return the predefined scenario called ``name``.

        Raises:
            ConfigError: naming the allowed scenarios when ``name`` is not one of them.
        """
        try:
            return SCENARIOS[name]
        except KeyError:
            raise ConfigError(f"unknown scenario {name!r}; allowed: {', '.join(SCENARIOS)}") from None

    def affected(self, n_servers: int, seed: int) -> np.ndarray:
        """Return a boolean mask of the affected servers (seeded, nested across fractions).

        Args:
            n_servers: Fleet size.
            seed: The fleet's seed.
        """
        mask = np.zeros(n_servers, dtype=bool)
        if self.affected_fraction > 0 and n_servers > 0:
            count = max(1, math.floor(self.affected_fraction * n_servers + 0.5))
            order = np.random.default_rng([seed, _AFFECTED_STREAM]).permutation(n_servers)
            mask[order[:count]] = True
        return mask


SCENARIOS: Mapping[str, Scenario] = {
    "healthy": Scenario("healthy"),
    "degrading": Scenario("degrading", affected_fraction=0.15, rate_multiplier=4.0, intensity=1.5),
    "critical": Scenario("critical", affected_fraction=0.30, rate_multiplier=10.0, intensity=2.0),
}
SCENARIO_NAMES: tuple[str, ...] = tuple(SCENARIOS)


def as_scenario(scenario: str | Scenario) -> Scenario:
    """Return ``scenario`` itself or the predefined scenario of that name."""
    return scenario if isinstance(scenario, Scenario) else Scenario.named(scenario)


class ScenarioSchedule:
    """Which scenario holds from which absolute step on (a batch run has one entry).

    Args:
        scenario: The scenario in force from the start.
        n_servers: Fleet size.
        seed: The fleet's seed (picks the affected servers).
    """

    def __init__(self, scenario: str | Scenario, n_servers: int, seed: int) -> None:
        self._n_servers = n_servers
        self._seed = seed
        self._steps: list[int] = [-(2**62)]
        self._scenarios: list[Scenario] = [as_scenario(scenario)]
        self._masks: list[np.ndarray] = [self._scenarios[0].affected(n_servers, seed)]

    def switch(self, step: int, scenario: str | Scenario) -> Scenario:
        """Put ``scenario`` in force from absolute step ``step`` on, replacing later switches.

        Returns:
            The scenario now scheduled.
        """
        new = as_scenario(scenario)
        keep = bisect.bisect_left(self._steps, step)
        del self._steps[keep:], self._scenarios[keep:], self._masks[keep:]
        self._steps.append(step)
        self._scenarios.append(new)
        self._masks.append(new.affected(self._n_servers, self._seed))
        return new

    def current(self) -> Scenario:
        """Return the scenario of the latest switch."""
        return self._scenarios[-1]

    def affected(self) -> np.ndarray:
        """Return the affected-server mask of the latest switch."""
        return self._masks[-1]

    def lookup(self, steps: np.ndarray, servers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return rate multiplier, intensity and scenario index for (step, server) pairs.

        Args:
            steps: Absolute step numbers.
            servers: Server indices, same shape as ``steps``.
        """
        which = np.searchsorted(np.array(self._steps), steps, side="right") - 1
        masks = np.stack(self._masks)
        hit = masks[which, servers]
        rate = np.array([s.rate_multiplier for s in self._scenarios])[which]
        intensity = np.array([s.intensity for s in self._scenarios])[which]
        return np.where(hit, rate, 1.0), np.where(hit, intensity, 1.0), which

    def names(self) -> tuple[str, ...]:
        """Return the scenario names, indexed by :meth:`lookup`'s third result."""
        return tuple(s.name for s in self._scenarios)
