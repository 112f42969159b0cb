"""Batch generation: a seeded fleet simulated day by day into one contract frame."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator.fleet import Fleet, make_fleet
from workbench.simulator.metrics import derive_metrics, nominal_load
from workbench.simulator.noise import DayNoise, NoiseStream
from workbench.simulator.patterns import SECONDS_PER_DAY

DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
STEPS_PER_DAY = SECONDS_PER_DAY // contract.STEP_SECONDS
HEALTHY = contract.STATES.index("healthy")


def generate(
    n_servers: int, days: float, seed: int, *, start: datetime = DEFAULT_START, progress: bool = False
) -> pl.DataFrame:
    """Simulate a fleet of ``n_servers`` for ``days`` on the contract's step grid.

    Args:
        n_servers: Number of servers (>= 1), spread over the contract profiles.
        days: Length of the span in days (> 0; fractions allowed, rounded to whole steps).
        seed: Non-negative seed; the same seed gives the same frame.
        start: First timestamp, floored to the step grid (a naive datetime is taken as UTC).
        progress: Show a progress bar over the days.

    Returns:
        A contract frame (:data:`contract.COLUMNS`, :data:`contract.SCHEMA`) sorted by server
        name then timestamp.

    Raises:
        ConfigError: when an argument is out of range.
    """
    return simulate(make_fleet(n_servers, seed), days, start=start, progress=progress)


def simulate(fleet: Fleet, days: float, *, start: datetime = DEFAULT_START, progress: bool = False) -> pl.DataFrame:
    """Simulate a given fleet; its noise is drawn from ``fleet.seed``.

    Args:
        fleet: The servers, e.g. from :func:`make_fleet`.
        days: Length of the span in days (> 0).
        start: First timestamp, floored to the step grid (a naive datetime is taken as UTC).
        progress: Show a progress bar over the days.

    Returns:
        A contract frame sorted by server name then timestamp.
    """
    n_steps = _n_steps(days)
    t0 = _start_seconds(start, n_steps)
    noise = NoiseStream(fleet.seed, fleet.size, STEPS_PER_DAY)
    values = {m: np.empty((fleet.size, n_steps)) for m in contract.METRIC_NAMES}
    states = np.empty((fleet.size, n_steps), dtype=np.uint8)
    n_days = math.ceil(n_steps / STEPS_PER_DAY)
    for day in tqdm(range(n_days), desc="simulating", unit="day", disable=not progress):
        lo = day * STEPS_PER_DAY
        hi = min(lo + STEPS_PER_DAY, n_steps)
        # Always a whole day, sliced afterwards: a partial day then equals the start of a full one.
        t = t0 + (lo + np.arange(STEPS_PER_DAY, dtype=np.int64)) * contract.STEP_SECONDS
        metrics, day_states = simulate_steps(t, fleet, noise.day(day))
        for name, array in metrics.items():
            values[name][:, lo:hi] = array[: hi - lo].T
        states[:, lo:hi] = day_states[: hi - lo].T
    return _assemble(fleet, t0, values, states)


def simulate_steps(t: np.ndarray, fleet: Fleet, noise: DayNoise) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Simulate ``T`` steps of every server.

    This is where a state/incident layer plugs in: it picks a state per (time, server), scales
    ``load`` (and may override metrics) before the metrics are derived from it.

    Args:
        t: Epoch seconds, shape ``(T,)``.
        fleet: The servers.
        noise: Noise for the same steps.

    Returns:
        Metrics by contract name, each ``(T, S)``, and state codes (indices into
        :data:`contract.STATES`), ``(T, S)``.
    """
    load = nominal_load(t, fleet, noise)
    states = np.full(load.shape, HEALTHY, dtype=np.uint8)
    return derive_metrics(t, load, fleet, noise), states


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


def _n_steps(days: float) -> int:
    if not (isinstance(days, int | float) and math.isfinite(days) and days > 0):
        raise ConfigError(f"days must be a positive number, got {days!r}")
    n_steps = round(days * STEPS_PER_DAY)
    if n_steps < 1:
        raise ConfigError(f"days={days!r} is shorter than one {contract.STEP_SECONDS} s step")
    return n_steps


def _start_seconds(start: datetime, n_steps: int) -> int:
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    seconds = math.floor(start.timestamp() / contract.STEP_SECONDS) * contract.STEP_SECONDS
    end = seconds + n_steps * contract.STEP_SECONDS
    if start < contract.TIMESTAMP_MIN or end >= contract.TIMESTAMP_MAX.timestamp():
        raise ConfigError(
            f"the span must lie between {contract.TIMESTAMP_MIN:%Y-%m-%d} and {contract.TIMESTAMP_MAX:%Y-%m-%d}"
        )
    return seconds
