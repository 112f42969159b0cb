"""When incidents happen: seeded candidates per day, thinned by the scenario, one at a time per server.

Scheduling is chunk-consistent: day ``d`` draws candidate incidents from
``default_rng([seed, 3, day])`` at ``MAX_RATE_MULTIPLIER`` times the base rate, whatever the
scenario; the scenario in force at a candidate's start step keeps it with probability
``multiplier / MAX_RATE_MULTIPLIER`` (Poisson thinning), and a server already busy with an
incident (until the end of its recovery) refuses new ones. Incidents therefore arrive as a
Poisson process at the scenario's rate during each server's free time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from workbench import contract
from workbench.simulator.incidents import KINDS, MIN_RISE_STEPS, IncidentBatch, target_cap
from workbench.simulator.scenarios import MAX_RATE_MULTIPLIER, ScenarioSchedule

_CANDIDATE_STREAM = 3
_N_UNIFORMS = 7  # rise, plateau, recovery, shape, center, target, magnitude


def base_rates(profiles: Sequence[str], rates: Mapping[str, float]) -> np.ndarray:
    """Return incidents per server-day for each server and type, ``(S, len(KINDS))``, before scenarios.

    Args:
        profiles: Profile of each server.
        rates: Base rate per incident type (profile factors are applied on top).
    """
    return np.array([[rates[k.name] * k.profile_factors.get(p, 1.0) for k in KINDS] for p in profiles], dtype=float)


@dataclass(frozen=True, eq=False)
class Candidates:
    """Possible incidents of one day, drawn whatever the scenario (sorted by server, then step).

    Attributes:
        server: Server index.
        kind: Index into :data:`KINDS`.
        start: Start step (absolute).
        keep: Uniform compared with the scenario's thinning probability.
        uniforms: Shape parameters as uniforms, ``(n, 7)``.
    """

    server: np.ndarray
    kind: np.ndarray
    start: np.ndarray
    keep: np.ndarray
    uniforms: np.ndarray


def draw_candidates(seed: int, day: int, first_step: int, steps: int, rates: np.ndarray) -> Candidates:
    """Draw the candidate incidents starting on day ``day`` from ``default_rng([seed, 3, day])``.

    Args:
        seed: The fleet's seed.
        day: Day index from the start of the run.
        first_step: Absolute step of the day's first step.
        steps: Steps in a day.
        rates: Base rates ``(S, K)`` from :func:`base_rates`.
    """
    rng = np.random.default_rng([seed, _CANDIDATE_STREAM, day])
    counts = rng.poisson(rates * MAX_RATE_MULTIPLIER)
    flat = np.repeat(np.arange(counts.size), counts.ravel())
    n = flat.size
    start = first_step + rng.integers(0, steps, n)
    keep = rng.random(n)
    uniforms = rng.random((n, _N_UNIFORMS))
    server, kind = np.divmod(flat, len(KINDS))
    order = np.lexsort((kind, start, server))
    return Candidates(server[order], kind[order], start[order], keep[order], uniforms[order])


def accept(
    candidates: Candidates,
    schedule: ScenarioSchedule,
    busy_until: np.ndarray,
    levels: tuple[np.ndarray, np.ndarray],
) -> tuple[IncidentBatch, np.ndarray]:
    """Keep the candidates the scenario admits and that find their server free.

    Args:
        candidates: The day's candidates.
        schedule: Scenario per step.
        busy_until: First free step per server, ``(S,)``.
        levels: Critical and warning level per server and type, each ``(S, K)``.

    Returns:
        The new incidents and the updated ``busy_until``.
    """
    c = candidates
    multiplier, intensity, which = schedule.lookup(c.start, c.server)
    admitted = np.flatnonzero(c.keep < multiplier / MAX_RATE_MULTIPLIER)
    batch = _realise(c, intensity, levels).take(admitted)
    batch = replace(batch, scenario=np.asarray(schedule.names(), dtype=object)[which[admitted]])
    busy = busy_until.copy()
    chosen: list[np.ndarray] = []
    pending = np.arange(len(batch))
    while pending.size:  # one round per candidate of the busiest server
        _, first = np.unique(batch.server[pending], return_index=True)
        heads = pending[first]
        free = heads[batch.start[heads] >= busy[batch.server[heads]]]
        busy[batch.server[free]] = batch.recovered[free]
        chosen.append(free)
        pending = np.delete(pending, first)
    taken = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
    return batch.take(taken), busy


def _realise(c: Candidates, intensity: np.ndarray, levels: tuple[np.ndarray, np.ndarray]) -> IncidentBatch:
    """Turn the candidates' uniforms into incident parameters under their scenario's intensity."""
    u = c.uniforms.T
    table = {name: np.array([getattr(k, name) for k in KINDS], dtype=float)[c.kind] for name in _RANGES}
    rise = _steps(_log_uniform(table["rise_minutes"], u[0]) / np.sqrt(intensity))
    plateau = _steps(_log_uniform(table["plateau_minutes"], u[1]) * intensity)
    recovery = _steps(_log_uniform(table["recovery_minutes"], u[2]))
    critical, warning = levels[0][c.server, c.kind], levels[1][c.server, c.kind]
    cap = np.empty_like(critical)
    for k, kind in enumerate(KINDS):
        mine = c.kind == k
        cap[mine] = target_cap(kind.metric, critical[mine])
    target = critical + (cap - critical) * (0.3 + 0.6 * u[5]) ** (1.0 / intensity)
    magnitude = _uniform(table["magnitude"], u[6]) * np.sqrt(intensity)
    return IncidentBatch(
        server=c.server,
        kind=c.kind,
        start=c.start,
        rise=np.maximum(rise, MIN_RISE_STEPS),
        plateau=np.maximum(plateau, 1),
        recovery=np.maximum(recovery, 1),
        shape=_uniform(table["shape"], u[3]),
        center=0.35 + 0.3 * u[4],
        target=target,
        magnitude=magnitude,
        critical=critical,
        warning=warning,
        intensity=intensity,
        scenario=np.full(c.server.shape, "", dtype=object),
        onset=np.full(c.server.shape, -1, dtype=np.int64),
    )


_RANGES = ("rise_minutes", "plateau_minutes", "recovery_minutes", "shape", "magnitude")


def _log_uniform(bounds: np.ndarray, u: np.ndarray) -> np.ndarray:
    lo, hi = np.log(bounds[:, 0]), np.log(bounds[:, 1])
    return np.exp(lo + (hi - lo) * u)


def _uniform(bounds: np.ndarray, u: np.ndarray) -> np.ndarray:
    return bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * u


def _steps(minutes: np.ndarray) -> np.ndarray:
    return np.round(minutes * 60 / contract.STEP_SECONDS).astype(np.int64)
