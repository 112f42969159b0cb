"""The course of each incident over time: rise shapes, side effects, onsets and state labels.

All functions work on ``(n, T)`` arrays (``n`` incidents, ``T`` steps of one day) and scatter the
result onto ``(T, S)`` fleet arrays; incidents of one server never overlap, so no two write the
same cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from workbench.simulator.incidents import (
    INCIDENT_TYPES,
    PRIMARY_METRICS,
    PRIMARY_OF,
    IncidentBatch,
    background_ceiling,
)
from workbench.simulator.metrics import Pull
from workbench.simulator.states import CRITICAL, HEALTHY, HEAVY, MAINTENANCE, OFFLINE, RECOVERY

LEAK, DISK_FILL, TRAFFIC, STORM, SATURATION = (
    INCIDENT_TYPES.index(name)
    for name in ("memory_leak", "disk_fill", "traffic_growth", "dependency_storm", "latency_saturation")
)
TARGET_NOISE = 0.15  # noise of the primary metric at its target, as a share of (target - critical)
ACTIVE, RECOVERING = 1, 2  # phase codes: between start and end, between end and recovered


@dataclass(frozen=True, eq=False)
class IncidentEffects:
    """What the day's incidents do to the fleet, each array ``(T, S)``.

    Attributes:
        load: Load multiplier.
        io: Disk throughput multiplier.
        latency: Latency multiplier.
        blend: Per primary metric, the cells pulled towards the incident's target.
        phase: 0 outside incidents, :data:`ACTIVE` from precursor start to end,
            :data:`RECOVERING` from end to recovered.
    """

    load: np.ndarray
    io: np.ndarray
    latency: np.ndarray
    blend: Mapping[str, Pull]
    phase: np.ndarray


@dataclass(frozen=True, eq=False)
class _Course:
    rel: np.ndarray  # steps since precursor start, (n, T)
    x: np.ndarray  # progress through the rise in [0, 1]
    y: np.ndarray  # progress through the recovery in [0, 1]
    rising: np.ndarray
    plateau: np.ndarray
    recovering: np.ndarray

    @property
    def inside(self) -> np.ndarray:
        return self.rising | self.plateau | self.recovering


def _course(batch: IncidentBatch, steps: np.ndarray) -> _Course:
    rel = steps[None, :] - batch.start[:, None]
    rise, end = batch.rise[:, None], (batch.rise + batch.plateau)[:, None]
    return _Course(
        rel=rel,
        x=np.clip(rel / rise, 0.0, 1.0),
        y=np.clip((rel - end) / batch.recovery[:, None], 0.0, 1.0),
        rising=(rel >= 0) & (rel < rise),
        plateau=(rel >= rise) & (rel < end),
        recovering=(rel >= end) & (rel < end + batch.recovery[:, None]),
    )


def _rise(batch: IncidentBatch, x: np.ndarray) -> np.ndarray:
    """Weight from 0 to 1 over the rise: accelerating, convex, logistic, hyperbolic or late-exploding."""
    a = batch.shape[:, None]
    exponential = np.expm1(a * x) / np.expm1(a)
    logistic = 1.0 / (1.0 + np.exp(-a * (x - batch.center[:, None])))
    lo = 1.0 / (1.0 + np.exp(a * batch.center[:, None]))
    hi = 1.0 / (1.0 + np.exp(-a * (1.0 - batch.center[:, None])))
    kind = batch.kind[:, None]
    return np.select(
        [kind == LEAK, kind == TRAFFIC, kind == SATURATION],
        [exponential, (logistic - lo) / (hi - lo), _queueing(a, x)],
        x**a,
    )


def _queueing(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Queueing delay as the load on a pool grows: slope ``1 / (1 + a)`` at 0, ``1 + a`` at 1."""
    return x / (1.0 + a * (1.0 - x))


def _fade(batch: IncidentBatch, y: np.ndarray) -> np.ndarray:
    """Weight from 1 to 0 over the recovery: a restart, a cleanup, traffic fading, a pool draining, errors fading."""
    kind = batch.kind[:, None]
    return np.select(
        [kind == LEAK, kind == DISK_FILL, kind == TRAFFIC, kind == SATURATION],
        [np.zeros_like(y), np.clip(1 - 3 * y, 0, 1), 1 - y, _queueing(batch.shape[:, None], 1 - y)],
        (1 - y) ** 2,
    )


def _weight(batch: IncidentBatch, course: _Course) -> np.ndarray:
    return np.select(
        [course.rising, course.plateau, course.recovering], [_rise(batch, course.x), 1.0, _fade(batch, course.y)], 0.0
    )


def paint(batch: IncidentBatch, steps: np.ndarray, n_servers: int, white: Mapping[str, np.ndarray]) -> IncidentEffects:
    """Return the effects of ``batch`` on the fleet over ``steps``.

    Args:
        batch: Incidents that may touch these steps.
        steps: Absolute step numbers, ``(T,)``.
        n_servers: Fleet size.
        white: The day's white noise per metric, ``(T, S)`` (gives the targets their noise).
    """
    shape = (steps.shape[0], n_servers)
    course = _course(batch, steps)
    w = _weight(batch, course)
    kind, m = batch.kind[:, None], batch.magnitude[:, None]
    creep = np.select(
        [course.rising, course.plateau, course.recovering], [np.minimum(course.x / 0.6, 1.0), 1.0, w], 0.0
    )
    load = np.select([kind == LEAK, kind == TRAFFIC], [1 + m * w, 1 + (m - 1) * w], 1.0)
    io = np.where(kind == DISK_FILL, 1 + (m - 1) * w, 1.0)
    latency = np.select([kind == LEAK, kind == STORM], [1 + 2 * m * w**2, 1 + (m - 1) * creep], 1.0)
    phase = np.select([course.rising | course.plateau, course.recovering], [ACTIVE, RECOVERING], 0).astype(np.int8)

    ii, jj = np.nonzero(course.inside)
    cols = batch.server[ii]

    def scatter(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(shape, fill, dtype=values.dtype)
        out[jj, cols] = values
        return out

    blend = {}
    for metric in PRIMARY_METRICS:
        mine = np.flatnonzero(np.asarray(PRIMARY_OF, dtype=object)[batch.kind[ii]] == metric)
        i, j, s = ii[mine], jj[mine], cols[mine]
        gap = batch.target[i] - batch.critical[i]
        noisy = np.maximum(batch.target[i] + TARGET_NOISE * gap * white[metric][j, s], batch.critical[i] + 0.25 * gap)
        # After the end the pull aims at the background ceiling: elevated, fading, below critical.
        ceiling = background_ceiling(batch.critical[i], batch.warning[i])
        target = np.where(phase[i, j] == RECOVERING, np.minimum(noisy, ceiling), noisy)
        blend[metric] = Pull(j, s, w[i, j], target)
    return IncidentEffects(
        load=scatter(load[ii, jj], 1.0),
        io=scatter(io[ii, jj], 1.0),
        latency=scatter(latency[ii, jj], 1.0),
        blend=blend,
        phase=scatter(phase[ii, jj], 0),
    )


def mask_background(states: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Return the chain's states with incidents taken into account, before any metric is known.

    During an incident an ``offline`` or ``maintenance`` server counts as ``healthy`` (the
    incident's precursor must stay visible); after its end the server is in ``recovery``.
    """
    quiet = (phase == ACTIVE) & ((states == OFFLINE) | (states == MAINTENANCE))
    out = np.where(quiet, HEALTHY, states)
    return np.where(phase == RECOVERING, RECOVERY, out).astype(np.uint8)


def primary_values(batch: IncidentBatch, metrics: Mapping[str, np.ndarray]) -> np.ndarray:
    """Return each incident's primary metric on its server over the day, ``(n, T)``."""
    n, steps = len(batch), next(iter(metrics.values())).shape[0]
    out = np.empty((n, steps))
    for metric in PRIMARY_METRICS:
        mine = np.flatnonzero(np.asarray(PRIMARY_OF, dtype=object)[batch.kind] == metric)
        out[mine] = metrics[metric][:, batch.server[mine]].T
    return out


def find_onsets(batch: IncidentBatch, steps: np.ndarray, values: np.ndarray) -> IncidentBatch:
    """Return ``batch`` with the onset of each incident that first reaches critical in ``steps``.

    Args:
        batch: Incidents.
        steps: Absolute step numbers of the day, ``(T,)``.
        values: :func:`primary_values` of the day.
    """
    course = _course(batch, steps)
    hit = (values >= batch.critical[:, None]) & (course.rising | course.plateau)
    found = hit.any(axis=1) & (batch.onset < 0)
    return batch.with_onset(np.where(found, steps[hit.argmax(axis=1)], batch.onset))


def label(batch: IncidentBatch, steps: np.ndarray, values: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Return the final state codes: ``critical_issue`` from onset to end, ``recovery`` after it.

    A precursor shows ``heavy_load`` once its primary metric passes the warning level, else the
    (masked) background state.

    Args:
        batch: Incidents with their onsets found.
        steps: Absolute step numbers, ``(T,)``.
        values: :func:`primary_values` of the day.
        background: Masked chain states, ``(T, S)``.
    """
    course = _course(batch, steps)
    onset = np.where(batch.onset >= 0, batch.onset - batch.start, np.iinfo(np.int64).max)[:, None]
    active = course.rising | course.plateau
    critical = active & (course.rel >= onset)
    heavy = active & (course.rel < onset) & (values >= batch.warning[:, None])
    code = np.select([critical, course.recovering, heavy], [CRITICAL, RECOVERY, HEAVY], 255)
    ii, jj = np.nonzero(code != 255)
    out = background.copy()
    out[jj, batch.server[ii]] = code[ii, jj]
    return out
