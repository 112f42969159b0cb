"""One simulated day of a fleet: noise, state chain, incidents, metrics and labels.

:class:`Simulator` draws each day's randomness once (:meth:`Simulator.inputs`), independent of
the scenario, and turns it into metrics and states given what is carried over from the day
before (:class:`Carry`) and the scenario per step (:meth:`Simulator.run_day`). Everything is
causal: a scenario switch at step ``k`` changes nothing before ``k``, so the stream can rerun
its current day after a switch and keep the steps it has already yielded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator import arrivals
from workbench.simulator import incidents as inc
from workbench.simulator import trajectories as traj
from workbench.simulator.fleet import Fleet
from workbench.simulator.metrics import Effects, derive_metrics, nominal_load, seasonal_factor
from workbench.simulator.noise import DayNoise, NoiseStream
from workbench.simulator.patterns import SECONDS_PER_DAY
from workbench.simulator.scenarios import ScenarioSchedule
from workbench.simulator.states import (
    CHAIN_RATES,
    HEALTHY,
    OFFLINE,
    ChainRates,
    MaintenanceWindows,
    chain_uniforms,
    effect_factors,
    run_chain,
)
from workbench.thresholds import Thresholds

STEPS_PER_DAY = SECONDS_PER_DAY // contract.STEP_SECONDS


def _default_rates() -> dict[str, float]:
    return {k.name: k.rate for k in inc.KINDS}


@dataclass(frozen=True)
class SimulatorConfig:
    """Settings of the state and incident layers.

    Attributes:
        incident_rates: Incidents per server-day by type in the ``healthy`` scenario; types left
            out keep their default (:data:`workbench.simulator.incidents.KINDS`).
        thresholds: Warning and critical levels; an incident's onset is its primary metric's
            critical crossing.
        chain: Transition probabilities of the state chain.
    """

    incident_rates: Mapping[str, float] = field(default_factory=_default_rates)
    thresholds: Thresholds = field(default_factory=Thresholds)
    chain: ChainRates = CHAIN_RATES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.incident_rates) - set(inc.INCIDENT_TYPES))
        if unknown:
            raise ConfigError(f"unknown incident type(s) {unknown}; allowed: {', '.join(inc.INCIDENT_TYPES)}")
        bad = {k: v for k, v in self.incident_rates.items() if not (math.isfinite(v) and 0 <= v <= 10)}
        if bad:
            raise ConfigError(f"incident rates must lie in [0, 10] per server-day, got {bad}")
        object.__setattr__(self, "incident_rates", {**_default_rates(), **self.incident_rates})
        for metric in inc.PRIMARY_METRICS:
            for profile in contract.PROFILES:
                if self.thresholds.level(metric, profile) is None:
                    raise ConfigError(f"incidents need a critical level for {metric} (profile {profile})")


@dataclass(frozen=True, eq=False)
class Carry:
    """What one day hands to the next.

    Attributes:
        chain: State-chain codes after the day's last step, ``(S,)``.
        active: Incidents not yet recovered.
        busy_until: First step at which each server may start a new incident, ``(S,)``.
    """

    chain: np.ndarray
    active: inc.IncidentBatch
    busy_until: np.ndarray


@dataclass(frozen=True, eq=False)
class DayInputs:
    """A day's randomness, drawn whatever the scenario.

    Attributes:
        day: Day index from the start of the run.
        t: Epoch seconds of the day's steps, ``(T,)``.
        noise: Metric noise.
        chain_uniforms: Uniforms of the state chain, ``(T, S)``.
        candidates: Candidate incidents starting this day.
    """

    day: int
    t: np.ndarray
    noise: DayNoise
    chain_uniforms: np.ndarray
    candidates: arrivals.Candidates


@dataclass(frozen=True, eq=False)
class DayResult:
    """A simulated day.

    Attributes:
        metrics: Every contract metric, ``(T, S)``.
        states: State codes (indices into :data:`contract.STATES`), ``(T, S)``.
        carry: What the next day starts from.
        finished: Incidents that recovered within the day.
    """

    metrics: dict[str, np.ndarray]
    states: np.ndarray
    carry: Carry
    finished: inc.IncidentBatch


class Simulator:
    """Day-by-day simulation of one fleet from its seed.

    Args:
        fleet: The servers; their seed seeds everything.
        start_seconds: Epoch seconds of the first step (on the step grid).
        config: State and incident settings.
    """

    def __init__(self, fleet: Fleet, start_seconds: int, config: SimulatorConfig | None = None) -> None:
        self.fleet = fleet
        self.config = config or SimulatorConfig()
        self.start_seconds = start_seconds
        self._noise = NoiseStream(fleet.seed, fleet.size, STEPS_PER_DAY)
        self._windows = MaintenanceWindows.draw(fleet)
        self._rates = arrivals.base_rates(fleet.profiles, self.config.incident_rates)
        self._levels = self._incident_levels()
        self._ceilings = self._ceiling_table()

    def initial_carry(self) -> Carry:
        """Return the state before the first day: all healthy, no incidents."""
        n = self.fleet.size
        return Carry(np.full(n, HEALTHY, dtype=np.uint8), inc.IncidentBatch.empty(), np.zeros(n, dtype=np.int64))

    def inputs(self, day: int) -> DayInputs:
        """Draw day ``day``'s randomness; days must be drawn in order 0, 1, 2, ..."""
        t = (
            self.start_seconds
            + (day * STEPS_PER_DAY + np.arange(STEPS_PER_DAY, dtype=np.int64)) * contract.STEP_SECONDS
        )
        first_step = int(t[0]) // contract.STEP_SECONDS
        return DayInputs(
            day=day,
            t=t,
            noise=self._noise.day(day),
            chain_uniforms=chain_uniforms(self.fleet.seed, day, (STEPS_PER_DAY, self.fleet.size)),
            candidates=arrivals.draw_candidates(self.fleet.seed, day, first_step, STEPS_PER_DAY, self._rates),
        )

    def run_day(self, inputs: DayInputs, carry: Carry, schedule: ScenarioSchedule) -> DayResult:
        """Simulate one day; the same arguments always give the same result.

        Args:
            inputs: The day's randomness from :meth:`inputs`.
            carry: State at the start of the day (:meth:`initial_carry` or the previous day's).
            schedule: Scenario per step.
        """
        t, noise, fleet = inputs.t, inputs.noise, self.fleet
        steps = t // contract.STEP_SECONDS
        seasonal = seasonal_factor(t, fleet)
        chain = run_chain(carry.chain, t, seasonal, inputs.chain_uniforms, self._windows, self.config.chain)
        new, busy_until = arrivals.accept(inputs.candidates, schedule, carry.busy_until, self._levels)
        active = inc.IncidentBatch.concat([carry.active, new])
        effects = traj.paint(active, steps, fleet.size, noise.white)
        background = traj.mask_background(chain, effects.phase)
        factors = effect_factors(background)
        load = nominal_load(t, fleet, noise, seasonal) * factors["load"] * effects.load
        fx = Effects(
            io=factors["io"] * effects.io,
            latency=factors["latency"] * effects.latency,
            errors=factors["errors"],
            offline=background == OFFLINE,
            ceilings=self._ceilings,
            blend=effects.blend,
        )
        metrics = derive_metrics(t, load, fleet, noise, effects=fx)
        values = traj.primary_values(active, metrics)
        active = traj.find_onsets(active, steps, values)
        states = traj.label(active, steps, values, background)
        done = active.recovered <= steps[-1] + 1
        return DayResult(metrics, states, Carry(chain[-1], active.take(~done), busy_until), active.take(done))

    def _incident_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Critical and warning level of each incident type's primary metric, ``(S, K)`` each."""
        table = {p: self.config.thresholds.for_profile(p) for p in contract.PROFILES}
        levels = [[table[p][k.metric] for k in inc.KINDS] for p in self.fleet.profiles]
        critical = np.array([[lv.critical for lv in row] for row in levels], dtype=float)
        warning = np.array([[lv.warning for lv in row] for row in levels], dtype=float)
        return critical.reshape(self.fleet.size, len(inc.KINDS)), warning.reshape(self.fleet.size, len(inc.KINDS))

    def _ceiling_table(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Knee and ceiling per primary metric and server, keeping the background under critical."""
        critical, warning = self._levels
        return {
            kind.metric: (
                inc.background_knee(critical[:, k], warning[:, k]),
                inc.background_ceiling(critical[:, k], warning[:, k]),
            )
            for k, kind in enumerate(inc.KINDS)
        }
