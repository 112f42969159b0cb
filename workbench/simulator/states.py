"""The background state of each server: a Markov chain over the contract states, by time of day.

Every 5-minute step each server may leave its state. From ``healthy`` it enters ``morning_spike``
on weekday mornings (business profiles), ``maintenance`` at the start of its weekly window,
``heavy_load`` more often near its daily peak, ``idle`` in its quiet hours and, rarely,
``offline``. The other states return to ``healthy`` (``maintenance`` and ``offline`` through
``recovery``). ``critical_issue`` and the ``recovery`` after an incident come from the incident
layer. Transitions use one uniform per (step, server) from a per-day generator, and the chain's
state is carried across days, so chunking never changes the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from workbench import contract
from workbench.simulator import patterns
from workbench.simulator.fleet import Fleet


def code(state: str) -> int:
    """Return the code of a contract state (its index in :data:`contract.STATES`)."""
    return contract.STATES.index(state)


HEALTHY = code("healthy")
HEAVY = code("heavy_load")
CRITICAL = code("critical_issue")
IDLE = code("idle")
MAINTENANCE = code("maintenance")
SPIKE = code("morning_spike")
OFFLINE = code("offline")
RECOVERY = code("recovery")
_CHAIN_STREAM = 2
_WINDOW_STREAM = 4
_SECONDS_PER_WEEK = 7 * patterns.SECONDS_PER_DAY
_MONDAY_OFFSET = 3 * patterns.SECONDS_PER_DAY  # the epoch was a Thursday


@dataclass(frozen=True)
class StateEffect:
    """How a state scales a server's activity.

    Attributes:
        load: Multiplier of load (CPU, network, memory through load).
        io: Multiplier of disk throughput.
        latency: Multiplier of latency.
        errors: Multiplier of the error rate.
    """

    load: float = 1.0
    io: float = 1.0
    latency: float = 1.0
    errors: float = 1.0


STATE_EFFECTS: Mapping[str, StateEffect] = {
    "healthy": StateEffect(),
    "heavy_load": StateEffect(load=1.45, io=1.3, errors=1.5),
    "critical_issue": StateEffect(),  # the incident drives the metrics
    "idle": StateEffect(load=0.45, io=0.5, errors=0.5),
    "maintenance": StateEffect(load=0.25, io=2.5, latency=1.3),
    "morning_spike": StateEffect(load=1.6, io=1.2, errors=1.5),
    "offline": StateEffect(load=0.0, io=0.0, latency=0.0, errors=0.0),
    "recovery": StateEffect(load=0.85, io=1.3, latency=1.4, errors=2.0),
}


@dataclass(frozen=True)
class ChainRates:
    """Transition probabilities per 5-minute step (fleet-wide constants).

    Attributes:
        spike_hours: UTC hours ``[start, end)`` of weekday morning spikes.
        spike_entry: Chance per step to enter a morning spike inside those hours.
        heavy_entry: Chance per step to enter heavy load, at nominal load.
        heavy_peak: Extra chance per step per unit of seasonal load above nominal.
        idle_entry: Chance per step to go idle per unit of seasonal load below ``idle_below``.
        idle_below: Seasonal load under which a server may go idle.
        offline_entry: Chance per step to go offline (once per ~90 server-days).
        maintenance_use: Chance that a server uses its weekly maintenance window.
        leave: Chance per step to leave each non-healthy state.
    """

    spike_hours: tuple[float, float] = (7.0, 10.0)
    spike_entry: float = 0.05
    heavy_entry: float = 0.0015
    heavy_peak: float = 0.01
    idle_entry: float = 0.015
    idle_below: float = 0.85
    offline_entry: float = 1.0 / (288 * 90)
    maintenance_use: float = 0.6
    leave: Mapping[str, float] | None = None

    def leave_chance(self) -> dict[int, float]:
        """Return the chance per step to leave each state, by state code."""
        base = {"heavy_load": 1 / 12, "idle": 1 / 36, "morning_spike": 1 / 8, "offline": 1 / 9, "recovery": 1 / 6}
        return {code(s): p for s, p in {**base, **(self.leave or {})}.items()}


CHAIN_RATES = ChainRates()
# Where a state goes when it is left (maintenance leaves only at the end of its window).
_EXIT_TO = {HEAVY: HEALTHY, IDLE: HEALTHY, SPIKE: HEALTHY, MAINTENANCE: RECOVERY, OFFLINE: RECOVERY, RECOVERY: HEALTHY}
_ENTRIES = (MAINTENANCE, SPIKE, OFFLINE, HEAVY, IDLE)  # order of the entry thresholds from healthy


@dataclass(frozen=True, eq=False)
class MaintenanceWindows:
    """Each server's weekly maintenance window.

    Attributes:
        start_s: Start, seconds after Monday 00:00 UTC.
        length_s: Length in seconds.
        business: Whether the server has weekday morning spikes (a business-hours profile).
    """

    start_s: np.ndarray
    length_s: np.ndarray
    business: np.ndarray

    @classmethod
    def draw(cls, fleet: Fleet) -> MaintenanceWindows:
        """Draw windows from the fleet's seed: mostly weekend nights, 1 to 3 hours long."""
        rng = np.random.default_rng([fleet.seed, _WINDOW_STREAM])
        weekday = rng.choice(7, size=fleet.size, p=[0.08, 0.08, 0.08, 0.08, 0.08, 0.3, 0.3])
        hour = rng.integers(0, 5, fleet.size)
        steps = rng.integers(12, 37, fleet.size)
        return cls(
            start_s=weekday * patterns.SECONDS_PER_DAY + hour * patterns.SECONDS_PER_HOUR,
            length_s=steps * contract.STEP_SECONDS,
            business=fleet.weekend_factor < 0.9,
        )

    def position(self, t: np.ndarray) -> np.ndarray:
        """Return seconds since the latest window start, shape ``(T, S)``."""
        week_s = np.mod(t + _MONDAY_OFFSET, _SECONDS_PER_WEEK)
        return np.mod(week_s[:, None] - self.start_s[None, :], _SECONDS_PER_WEEK)


def chain_uniforms(seed: int, day: int, shape: tuple[int, int]) -> np.ndarray:
    """Return the chain's uniforms of one day, ``(T, S)``, from ``default_rng([seed, 2, day])``."""
    return np.random.default_rng([seed, _CHAIN_STREAM, day]).random(shape)


def run_chain(
    start: np.ndarray,
    t: np.ndarray,
    seasonal: np.ndarray,
    uniforms: np.ndarray,
    windows: MaintenanceWindows,
    rates: ChainRates = CHAIN_RATES,
) -> np.ndarray:
    """Advance the chain over ``T`` steps and return the state codes, ``(T, S)``.

    Args:
        start: State codes before the first step, ``(S,)``.
        t: Epoch seconds, ``(T,)``.
        seasonal: Seasonal load factor, ``(T, S)``.
        uniforms: One uniform per step and server, ``(T, S)``.
        windows: Maintenance windows.
        rates: Transition probabilities.
    """
    entry, leave = _probabilities(t, seasonal, windows, rates)
    exit_to = np.array([_EXIT_TO.get(k, k) for k in range(len(contract.STATES))], dtype=np.uint8)
    entries = np.array(_ENTRIES, dtype=np.uint8)
    servers = np.arange(start.shape[0])
    out = np.empty(uniforms.shape, dtype=np.uint8)
    state = start.astype(np.uint8)
    for i in range(t.shape[0]):
        u = uniforms[i]
        which = (u[None, :] >= entry[i]).sum(axis=0)  # index of the entered state, len(_ENTRIES) = stay
        from_healthy = np.where(which < len(entries), entries[np.minimum(which, len(entries) - 1)], HEALTHY)
        leaving = u < leave[i, state, servers]
        state = np.where(state == HEALTHY, from_healthy, np.where(leaving, exit_to[state], state)).astype(np.uint8)
        out[i] = state
    return out


def _probabilities(
    t: np.ndarray, seasonal: np.ndarray, windows: MaintenanceWindows, rates: ChainRates
) -> tuple[np.ndarray, np.ndarray]:
    """Return cumulative entry thresholds ``(T, E, S)`` from healthy and leave chances ``(T, K, S)``."""
    hour = patterns.hour_of_day(t)[:, None]
    weekday = (patterns.day_of_week(t) < 5)[:, None]
    lo, hi = rates.spike_hours
    spike_time = weekday & (hour >= lo) & (hour < hi) & windows.business[None, :]
    position = windows.position(t)
    in_window = position < windows.length_s[None, :]
    window_start = position < contract.STEP_SECONDS
    shape = seasonal.shape
    entry = np.stack(
        [
            np.where(window_start, rates.maintenance_use, 0.0),
            np.where(spike_time, rates.spike_entry, 0.0),
            np.full(shape, rates.offline_entry),
            rates.heavy_entry + rates.heavy_peak * np.maximum(seasonal - 1.0, 0.0),
            rates.idle_entry * np.maximum(rates.idle_below - seasonal, 0.0),
        ],
        axis=1,
    )
    leave = np.zeros((shape[0], len(contract.STATES), shape[1]))
    for state, chance in rates.leave_chance().items():
        leave[:, state] = chance
    leave[:, SPIKE] = np.where(spike_time, leave[:, SPIKE], 1.0)
    leave[:, MAINTENANCE] = np.where(in_window, 0.0, 1.0)
    leave[:, IDLE] += np.maximum(seasonal - 1.0, 0.0)
    return np.cumsum(entry, axis=1), leave


def effect_factors(states: np.ndarray) -> dict[str, np.ndarray]:
    """Return the per-(step, server) multipliers of :data:`STATE_EFFECTS` for state codes.

    Args:
        states: State codes, any shape.

    Returns:
        ``load``, ``io``, ``latency`` and ``errors`` multipliers, each shaped like ``states``.
    """
    table = [STATE_EFFECTS[s] for s in contract.STATES]
    return {name: np.array([getattr(e, name) for e in table])[states] for name in ("load", "io", "latency", "errors")}
