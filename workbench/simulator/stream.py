"""Stream mode: the fleet one 5-minute step at a time, on an accelerated clock, with scenario switches.

The stream runs the same day-by-day :class:`~workbench.simulator.engine.Simulator` as batch mode
and hands out one step per call, so with the same seed and scenario it yields exactly the rows
of :func:`~workbench.simulator.generate.simulate`. A scenario switch applies from the next step
on: the current day is simulated again from its start under the new schedule, which leaves the
steps already yielded unchanged (the simulation is causal).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator.engine import STEPS_PER_DAY, DayInputs, DayResult, Simulator, SimulatorConfig
from workbench.simulator.fleet import Fleet, make_fleet
from workbench.simulator.generate import DEFAULT_START, start_seconds
from workbench.simulator.incidents import IncidentBatch, ground_truth
from workbench.simulator.scenarios import Scenario, ScenarioSchedule

DEFAULT_TICK_SECONDS = 5.0


class FleetStream:
    """An endless iterator of contract frames, one step of the whole fleet per item.

    Args:
        n_servers: Fleet size (ignored when ``fleet`` is given).
        seed: Seed of the fleet and of everything simulated.
        fleet: A ready fleet instead of ``n_servers`` and ``seed``.
        scenario: Scenario at the start (name or :class:`Scenario`).
        start: First timestamp, floored to the step grid.
        config: State and incident settings.
        tick_seconds: Wall-clock seconds per step in :meth:`paced` (default 5: one 5-minute
            step every 5 s, 60 times faster than real time).
        clock: Monotonic clock in seconds (injectable for tests).
        sleep: Sleep function (injectable for tests).
    """

    def __init__(
        self,
        n_servers: int = 20,
        seed: int = 0,
        *,
        fleet: Fleet | None = None,
        scenario: str | Scenario = "healthy",
        start: datetime = DEFAULT_START,
        config: SimulatorConfig | None = None,
        tick_seconds: float = DEFAULT_TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not tick_seconds >= 0:
            raise ConfigError(f"tick_seconds must be >= 0, got {tick_seconds!r}")
        self.fleet = fleet or make_fleet(n_servers, seed)
        self.tick_seconds = tick_seconds
        self._clock, self._sleep = clock, sleep
        self._sim = Simulator(self.fleet, start_seconds(start, 1), config)
        self._schedule = ScenarioSchedule(scenario, self.fleet.size, self.fleet.seed)
        self._first_step = self._sim.start_seconds // contract.STEP_SECONDS
        self._step = 0  # steps yielded so far
        self._carry = self._sim.initial_carry()  # at the start of the current day
        self._inputs: DayInputs | None = None
        self._day: DayResult | None = None
        self._finished: list[IncidentBatch] = []
        self._names = pl.Series(contract.SERVER, self.fleet.names, dtype=contract.SCHEMA[contract.SERVER])
        self._profiles = pl.Series(contract.PROFILE, self.fleet.profiles, dtype=contract.SCHEMA[contract.PROFILE])

    @property
    def steps(self) -> int:
        """Number of steps yielded so far."""
        return self._step

    def __iter__(self) -> FleetStream:
        return self

    def __next__(self) -> pl.DataFrame:
        """Return the next step of every server as a contract frame sorted by server name."""
        day, pos = divmod(self._step, STEPS_PER_DAY)
        result = self._current_day(day)
        frame = self._frame(result, pos, self._sim.start_seconds + self._step * contract.STEP_SECONDS)
        self._step += 1
        if pos == STEPS_PER_DAY - 1:
            self._finished.append(result.finished)
            self._carry, self._inputs, self._day = result.carry, None, None
        return frame

    def set_scenario(self, scenario: str | Scenario) -> Scenario:
        """Switch to ``scenario`` from the next step on and return it.

        Raises:
            ConfigError: naming the allowed scenarios when the name is unknown.
        """
        new = self._schedule.switch(self._first_step + self._step, scenario)
        self._day = None  # rerun the current day under the new schedule
        return new

    def scenario_status(self) -> dict[str, Any]:
        """Return the scenario in force as JSON-friendly data.

        Returns:
            ``scenario``, ``affected_fraction``, ``rate_multiplier``, ``intensity``,
            ``affected_servers`` (names), ``step`` (steps yielded) and ``next_timestamp``.
        """
        scenario = self._schedule.current()
        next_time = self._sim.start_seconds + self._step * contract.STEP_SECONDS
        return {
            "scenario": scenario.name,
            "affected_fraction": scenario.affected_fraction,
            "rate_multiplier": scenario.rate_multiplier,
            "intensity": scenario.intensity,
            "affected_servers": np.asarray(self.fleet.names)[self._schedule.affected()].tolist(),
            "step": self._step,
            "next_timestamp": datetime.fromtimestamp(next_time, UTC).isoformat(),
        }

    def incidents(self) -> pl.DataFrame:
        """Return the ground truth of the span yielded so far (as batch mode would for that span)."""
        batches = list(self._finished)
        if self._step % STEPS_PER_DAY:
            result = self._current_day(self._step // STEPS_PER_DAY)
            batches += [result.finished, result.carry.active]
        else:
            batches.append(self._carry.active)
        return ground_truth(IncidentBatch.concat(batches), self.fleet.names, self.fleet.profiles, self._span_end())

    def incidents_in_progress(self) -> list[dict[str, str]]:
        """Return the incidents running at the last yielded step: server, type and phase.

        ``phase`` is ``precursor`` before the onset and ``critical`` from it to the end: the
        ground truth a live demo can be checked against (what should be foreseen, what is on).
        """
        if self._step == 0:
            return []
        now = datetime.fromtimestamp((self._span_end() - 1) * contract.STEP_SECONDS, UTC)
        running = self.incidents().filter((pl.col("precursor_start") <= now) & (pl.col("end") > now))
        return [
            {
                "server": row[contract.SERVER],
                "incident_type": row["incident_type"],
                "phase": "critical" if row["onset"] is not None and row["onset"] <= now else "precursor",
            }
            for row in running.sort(contract.SERVER).iter_rows(named=True)
        ]

    def recent_incidents(self, hours: float = 24.0) -> list[dict[str, str | None]]:
        """Return the incidents not yet recovered ``hours`` before the last yielded step, times as ISO text.

        A client whose view lags the stream (a daemon's forecast of an earlier step) checks
        itself against these rather than against :meth:`incidents_in_progress`.
        """
        if self._step == 0:
            return []
        since = (self._span_end() - 1) * contract.STEP_SECONDS - hours * 3600
        table = self.incidents().filter(pl.col("recovered").dt.epoch("s") > since).sort("precursor_start")
        times = ("precursor_start", "onset", "end", "recovered")
        return [
            {
                "server": row[contract.SERVER],
                "incident_type": row["incident_type"],
                **{k: None if row[k] is None else row[k].isoformat() for k in times},
            }
            for row in table.iter_rows(named=True)
        ]

    def paced(self, steps: int | None = None) -> Iterator[pl.DataFrame]:
        """Yield steps on the accelerated clock: one every ``tick_seconds``.

        Args:
            steps: Number of steps to yield (endless when ``None``).
        """
        due = self._clock()
        for _ in range(steps) if steps is not None else itertools.count():
            yield next(self)
            due += self.tick_seconds
            delay = due - self._clock()
            if delay > 0:
                self._sleep(delay)

    def _span_end(self) -> int:
        return self._first_step + self._step

    def _current_day(self, day: int) -> DayResult:
        if self._inputs is None:
            self._inputs = self._sim.inputs(day)
        if self._day is None:
            self._day = self._sim.run_day(self._inputs, self._carry, self._schedule)
        return self._day

    def _frame(self, result: DayResult, pos: int, seconds: int) -> pl.DataFrame:
        n = self.fleet.size
        micros = np.full(n, seconds * 1_000_000, dtype=np.int64)
        schema = contract.SCHEMA
        columns = [
            pl.Series(contract.TIMESTAMP, micros).cast(schema[contract.TIMESTAMP]),
            self._names,
            self._profiles,
            pl.Series(contract.STATE, contract.STATES, dtype=schema[contract.STATE]).gather(result.states[pos]),
            *[pl.Series(name, result.metrics[name][pos], dtype=schema[name]) for name in contract.METRIC_NAMES],
        ]
        return pl.DataFrame(columns)
