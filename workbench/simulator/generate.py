"""Batch generation: a seeded fleet simulated day by day into contract rows and ground truth."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator.engine import STEPS_PER_DAY, DayResult, Simulator, SimulatorConfig
from workbench.simulator.fleet import Fleet, make_fleet
from workbench.simulator.incidents import IncidentBatch, ground_truth
from workbench.simulator.scenarios import Scenario, ScenarioSchedule

DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday


@dataclass(frozen=True, eq=False)
class Simulation:
    """A simulated span of a fleet.

    Attributes:
        metrics: Contract rows sorted by server name then timestamp.
        incidents: Ground truth, one row per incident that starts within the span
            (:data:`workbench.simulator.incidents.GROUND_TRUTH_SCHEMA`).
        scenario: The scenario in force.
        affected: Servers whose incident rates the scenario changes.
    """

    metrics: pl.DataFrame
    incidents: pl.DataFrame
    scenario: Scenario
    affected: tuple[str, ...]


def generate(
    n_servers: int,
    days: float,
    seed: int,
    *,
    scenario: str | Scenario = "healthy",
    start: datetime = DEFAULT_START,
    config: SimulatorConfig | None = None,
    progress: bool = False,
) -> pl.DataFrame:
    """Simulate a fleet of ``n_servers`` for ``days`` on the contract's step grid.

    Args:
        n_servers: Number of servers (>= 1), spread over the contract profiles.
        days: Length of the span in days (> 0; fractions allowed, rounded to whole steps).
        seed: Non-negative seed; the same seed gives the same frame.
        scenario: Scenario name (``healthy``, ``degrading``, ``critical``) or a :class:`Scenario`.
        start: First timestamp, floored to the step grid (a naive datetime is taken as UTC).
        config: State and incident settings (default rates and thresholds when ``None``).
        progress: Show a progress bar over the days.

    Returns:
        A contract frame (:data:`contract.COLUMNS`, :data:`contract.SCHEMA`) sorted by server
        name then timestamp; :func:`simulate` also returns the incidents' ground truth.

    Raises:
        ConfigError: when an argument is out of range.
    """
    fleet = make_fleet(n_servers, seed)
    return simulate(fleet, days, scenario=scenario, start=start, config=config, progress=progress).metrics


def simulate(
    fleet: Fleet,
    days: float,
    *,
    scenario: str | Scenario = "healthy",
    start: datetime = DEFAULT_START,
    config: SimulatorConfig | None = None,
    progress: bool = False,
) -> Simulation:
    """Simulate a given fleet under one scenario; all randomness comes from ``fleet.seed``.

    Args:
        fleet: The servers, e.g. from :func:`make_fleet`.
        days: Length of the span in days (> 0).
        scenario: Scenario name or a :class:`Scenario`.
        start: First timestamp, floored to the step grid (a naive datetime is taken as UTC).
        config: State and incident settings.
        progress: Show a progress bar over the days.

    Returns:
        The contract rows and the ground truth of the incidents.
    """
    run = BatchRun(fleet, days, scenario=scenario, start=start, config=config)
    values = {m: np.empty((fleet.size, run.n_steps)) for m in contract.METRIC_NAMES}
    states = np.empty((fleet.size, run.n_steps), dtype=np.uint8)
    for lo, hi, result in run.days(progress=progress):
        for name, array in result.metrics.items():
            values[name][:, lo:hi] = array[: hi - lo].T
        states[:, lo:hi] = result.states[: hi - lo].T
    return Simulation(_assemble(fleet, run.t0, values, states), run.incidents(), run.scenario, run.affected)


class BatchRun:
    """A batch simulation consumed one day at a time (memory stays at one day's rows).

    Iterate :meth:`frames` (or :meth:`days`) to the end, then read :meth:`incidents`.

    Args:
        fleet: The servers.
        days: Length of the span in days (> 0).
        scenario: Scenario name or a :class:`Scenario`, for the whole span.
        start: First timestamp, floored to the step grid.
        config: State and incident settings.

    Raises:
        ConfigError: when an argument is out of range.
    """

    def __init__(
        self,
        fleet: Fleet,
        days: float,
        *,
        scenario: str | Scenario = "healthy",
        start: datetime = DEFAULT_START,
        config: SimulatorConfig | None = None,
    ) -> None:
        self.fleet = fleet
        self.n_steps = span_steps(days)
        self.t0 = start_seconds(start, self.n_steps)
        self._simulator = Simulator(fleet, self.t0, config)
        self._schedule = ScenarioSchedule(scenario, fleet.size, fleet.seed)
        self._finished: list[IncidentBatch] = []
        self._complete = False

    @property
    def scenario(self) -> Scenario:
        """The scenario in force."""
        return self._schedule.current()

    @property
    def affected(self) -> tuple[str, ...]:
        """Names of the servers the scenario affects."""
        return tuple(np.asarray(self.fleet.names)[self._schedule.affected()].tolist())

    def days(self, *, progress: bool = False) -> Iterator[tuple[int, int, DayResult]]:
        """Yield ``(lo, hi, day)``: the day's result covers steps ``lo`` to ``hi`` of the span.

        Args:
            progress: Show a progress bar over the days.
        """
        if self._finished:
            raise RuntimeError("a BatchRun can be iterated only once")
        carry = self._simulator.initial_carry()
        n_days = math.ceil(self.n_steps / STEPS_PER_DAY)
        for day in tqdm(range(n_days), desc="simulating", unit="day", disable=not progress):
            lo = day * STEPS_PER_DAY
            # Always a whole day, sliced afterwards: a partial day then equals the start of a full one.
            result = self._simulator.run_day(self._simulator.inputs(day), carry, self._schedule)
            carry = result.carry
            self._finished.append(result.finished)
            yield lo, min(lo + STEPS_PER_DAY, self.n_steps), result
        self._finished.append(carry.active)
        self._complete = True

    def frames(self, *, progress: bool = False) -> Iterator[pl.DataFrame]:
        """Yield one contract frame per simulated day, each sorted by server name then timestamp.

        Args:
            progress: Show a progress bar over the days.
        """
        for lo, hi, result in self.days(progress=progress):
            values = {name: array[: hi - lo].T for name, array in result.metrics.items()}
            yield _assemble(self.fleet, self.t0 + lo * contract.STEP_SECONDS, values, result.states[: hi - lo].T)

    def incidents(self) -> pl.DataFrame:
        """Return the ground truth of the span.

        Raises:
            RuntimeError: when the days have not all been simulated yet.
        """
        if not self._complete:
            raise RuntimeError("iterate BatchRun.days() or .frames() to the end before reading incidents")
        batch = IncidentBatch.concat(self._finished)
        span_end = self.t0 // contract.STEP_SECONDS + self.n_steps
        return ground_truth(batch, self.fleet.names, self.fleet.profiles, span_end)


def _assemble(fleet: Fleet, t0: int, values: dict[str, np.ndarray], states: np.ndarray) -> pl.DataFrame:
    """Lay ``(S, T)`` arrays out as rows, server-major (the fleet's names are sorted)."""
    n_servers, n_steps = states.shape
    micros = (t0 + np.arange(n_steps, dtype=np.int64) * contract.STEP_SECONDS) * 1_000_000
    server_index = np.repeat(np.arange(n_servers, dtype=np.uint32), n_steps)
    schema = contract.SCHEMA
    columns = [
        pl.Series(contract.TIMESTAMP, np.tile(micros, n_servers)).cast(schema[contract.TIMESTAMP]),
        pl.Series(contract.SERVER, fleet.names, dtype=schema[contract.SERVER]).gather(server_index),
        pl.Series(contract.PROFILE, fleet.profiles, dtype=schema[contract.PROFILE]).gather(server_index),
        pl.Series(contract.STATE, contract.STATES, dtype=schema[contract.STATE]).gather(states.ravel()),
        *[pl.Series(name, values[name].ravel(), dtype=schema[name]) for name in contract.METRIC_NAMES],
    ]
    return pl.DataFrame(columns).select(contract.COLUMNS)


def span_steps(days: float) -> int:
    """Return the number of steps in ``days`` (rounded), checking it is at least one.

    Raises:
        ConfigError: when ``days`` is not a positive number or shorter than one step.
    """
    if not (isinstance(days, int | float) and math.isfinite(days) and days > 0):
        raise ConfigError(f"days must be a positive number, got {days!r}")
    n_steps = round(days * STEPS_PER_DAY)
    if n_steps < 1:
        raise ConfigError(f"days={days!r} is shorter than one {contract.STEP_SECONDS} s step")
    return n_steps


def start_seconds(start: datetime, n_steps: int) -> int:
    """Return ``start`` as epoch seconds floored to the step grid (naive datetimes are UTC).

    Raises:
        ConfigError: when the span of ``n_steps`` steps leaves the contract's time range.
    """
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    seconds = math.floor(start.timestamp() / contract.STEP_SECONDS) * contract.STEP_SECONDS
    end = seconds + n_steps * contract.STEP_SECONDS
    if start < contract.TIMESTAMP_MIN or end >= contract.TIMESTAMP_MAX.timestamp():
        raise ConfigError(
            f"the span must lie between {contract.TIMESTAMP_MIN:%Y-%m-%d} and {contract.TIMESTAMP_MAX:%Y-%m-%d}"
        )
    return seconds
