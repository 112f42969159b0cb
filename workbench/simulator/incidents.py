"""Incidents with precursors: their types, when they happen, and the ground-truth table.

Each incident ramps its primary metric from the server's background towards a target above the
critical threshold over a *rise* (the precursor), stays there for a *plateau* and then recovers.
Its **onset** is the first step where the primary metric reaches
``Thresholds().level(metric, profile).critical``; background metrics stay below that level, so
every critical crossing of a primary metric belongs to exactly one incident. When incidents
happen is decided in :mod:`workbench.simulator.arrivals`, how they unfold in
:mod:`workbench.simulator.trajectories`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import polars as pl

from workbench import contract
from workbench.simulator.profiles import CPU, DISK, ERROR_RATE, LATENCY, MEM

MIN_RISE_STEPS = 6  # 30 minutes: the shortest rise any intensity can give
BACKGROUND_KNEE = 1.0  # outside incidents, primaries bend from critical - 1.0 * (critical - warning) ...
BACKGROUND_GAP = 0.5  # ... and stay below critical - 0.5 * (critical - warning): halfway from warning


@dataclass(frozen=True)
class IncidentKind:
    """One type of incident.

    Attributes:
        name: Type name written to the ground truth.
        metric: Primary metric; its critical crossing is the onset.
        rate: Incidents per server-day in the ``healthy`` scenario (before profile factors).
        rise_minutes: Range of the rise from precursor start to peak (drawn log-uniformly).
        plateau_minutes: Range of the critical phase after the peak.
        recovery_minutes: Range of the recovery after the end.
        shape: Range of the curvature of the rise (meaning depends on the type).
        magnitude: Range of the side effect (extra load, I/O or latency; unused without one).
        profile_factors: Rate multiplier per profile (1 when absent).
    """

    name: str
    metric: str
    rate: float
    rise_minutes: tuple[float, float]
    plateau_minutes: tuple[float, float]
    recovery_minutes: tuple[float, float]
    shape: tuple[float, float]
    magnitude: tuple[float, float]
    profile_factors: Mapping[str, float]


KINDS: tuple[IncidentKind, ...] = (
    # Memory grows exponentially (accelerating) until the process thrashes near 100 %; a restart ends it.
    IncidentKind(
        "memory_leak", MEM, 0.03, (60, 360), (10, 40), (10, 30), (2.0, 5.0), (0.15, 0.4),
        {"web_api": 1.5, "ml_compute": 1.5, "database": 0.7},
    ),
    # A runaway writer fills the filesystem on a convex (power-law) curve; a cleanup ends it.
    IncidentKind(
        "disk_fill", DISK, 0.02, (60, 360), (15, 90), (10, 30), (1.4, 2.6), (1.5, 3.5),
        {"data_ingest": 2.5, "database": 1.5, "web_api": 0.6},
    ),
    # Traffic grows logistically (S-curve), saturating CPU and then latency; it fades out slowly.
    IncidentKind(
        "traffic_growth", CPU, 0.03, (60, 240), (15, 60), (30, 90), (6.0, 12.0), (1.6, 3.0),
        {"web_api": 2.0, "risk_analytics": 1.2, "ml_compute": 0.3, "conductor_mgmt": 0.5},
    ),
    # A dependency degrades: latency creeps up first, then errors explode (high power of time).
    IncidentKind(
        "dependency_storm", ERROR_RATE, 0.02, (60, 240), (10, 45), (10, 30), (3.0, 6.0), (2.0, 6.0),
        {"web_api": 1.5, "risk_analytics": 1.5, "database": 0.5},
    ),
    # A downstream connection pool saturates: requests queue for a connection, so latency climbs
    # hyperbolically (like 1 / (1 - utilisation)) until the pool drains. No side effect.
    IncidentKind(
        "latency_saturation", LATENCY, 0.02, (60, 240), (10, 45), (10, 30), (3.0, 10.0), (1.0, 1.0),
        {"web_api": 1.5, "database": 1.5, "risk_analytics": 1.5, "ml_compute": 0.5, "data_ingest": 0.5},
    ),
)  # fmt: skip
INCIDENT_TYPES: tuple[str, ...] = tuple(k.name for k in KINDS)
PRIMARY_OF: tuple[str, ...] = tuple(k.metric for k in KINDS)
PRIMARY_METRICS: tuple[str, ...] = tuple(dict.fromkeys(PRIMARY_OF))
# Highest value a target may take (targets lie between critical and this), per primary metric:
# absolute for bounded metrics, a multiple of the critical level where that differs by profile.
TARGET_CAP: Mapping[str, float] = {CPU: 100.0, MEM: 100.0, DISK: 100.0, ERROR_RATE: 0.4}
TARGET_CAP_PER_CRITICAL: Mapping[str, float] = {LATENCY: 3.0}
if set(TARGET_CAP) & set(TARGET_CAP_PER_CRITICAL) or set(PRIMARY_METRICS) - {*TARGET_CAP, *TARGET_CAP_PER_CRITICAL}:
    raise RuntimeError(f"each primary metric {PRIMARY_METRICS} needs exactly one target cap")

GROUND_TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "incident_id": pl.UInt32(),
    contract.SERVER: pl.String(),
    contract.PROFILE: pl.String(),
    "incident_type": pl.String(),
    "metric": pl.String(),
    "threshold": pl.Float64(),
    "precursor_start": pl.Datetime("us", "UTC"),
    "onset": pl.Datetime("us", "UTC"),
    "peak": pl.Datetime("us", "UTC"),
    "end": pl.Datetime("us", "UTC"),
    "recovered": pl.Datetime("us", "UTC"),
    "intensity": pl.Float64(),
    "scenario": pl.String(),
}


@dataclass(frozen=True, eq=False)
class IncidentBatch:
    """Incidents as parallel arrays (one entry each); steps are absolute (epoch seconds / step).

    Attributes:
        server: Server index in the fleet.
        kind: Index into :data:`KINDS`.
        start: Precursor start step.
        rise: Steps from start to peak.
        plateau: Steps from peak to end.
        recovery: Steps from end to recovered.
        shape: Curvature of the rise.
        center: Midpoint of a logistic rise, as a fraction of it (traffic growth).
        target: Primary-metric value at the peak.
        magnitude: Size of the side effect.
        critical: Critical level of the primary metric for this server.
        warning: Warning level of the primary metric for this server.
        intensity: Scenario intensity at the start.
        scenario: Scenario name at the start.
        onset: Step of the first critical crossing, -1 while not reached.
    """

    server: np.ndarray
    kind: np.ndarray
    start: np.ndarray
    rise: np.ndarray
    plateau: np.ndarray
    recovery: np.ndarray
    shape: np.ndarray
    center: np.ndarray
    target: np.ndarray
    magnitude: np.ndarray
    critical: np.ndarray
    warning: np.ndarray
    intensity: np.ndarray
    scenario: np.ndarray
    onset: np.ndarray

    def __len__(self) -> int:
        return int(self.server.shape[0])

    @property
    def end(self) -> np.ndarray:
        """First step after the critical phase."""
        return self.start + self.rise + self.plateau

    @property
    def recovered(self) -> np.ndarray:
        """First step after the recovery."""
        return self.end + self.recovery

    def take(self, index: np.ndarray) -> IncidentBatch:
        """Return the incidents at ``index`` (integer positions or a boolean mask)."""
        return IncidentBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def with_onset(self, onset: np.ndarray) -> IncidentBatch:
        """Return a copy with new onset steps."""
        return replace(self, onset=onset)

    @classmethod
    def concat(cls, batches: Sequence[IncidentBatch]) -> IncidentBatch:
        """Join batches end to end."""
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)})

    @classmethod
    def empty(cls) -> IncidentBatch:
        """Return a batch without incidents."""
        ints = {"server", "kind", "start", "rise", "plateau", "recovery", "onset"}
        return cls(
            **{
                f.name: np.empty(0, dtype=np.int64 if f.name in ints else object if f.name == "scenario" else float)
                for f in fields(cls)
            }
        )


def target_cap(metric: str, critical: np.ndarray) -> np.ndarray:
    """Return the highest target of incidents on ``metric`` given their critical levels.

    Args:
        metric: A primary metric.
        critical: Critical level of each incident's primary metric.
    """
    if metric in TARGET_CAP_PER_CRITICAL:
        return TARGET_CAP_PER_CRITICAL[metric] * np.asarray(critical, dtype=float)
    return np.full(np.shape(critical), TARGET_CAP[metric])


def background_knee(critical: np.ndarray, warning: np.ndarray) -> np.ndarray:
    """Return where background values of a primary metric start to bend (the warning level)."""
    return critical - BACKGROUND_KNEE * (critical - warning)


def background_ceiling(critical: np.ndarray, warning: np.ndarray) -> np.ndarray:
    """Return the level background values of a primary metric stay below (under critical)."""
    return critical - BACKGROUND_GAP * (critical - warning)


def ground_truth(batch: IncidentBatch, names: Sequence[str], profiles: Sequence[str], span_end: int) -> pl.DataFrame:
    """Return the ground-truth table of the incidents that start before ``span_end``.

    Args:
        batch: Incidents (finished and still running).
        names: Server names, by server index.
        profiles: Server profiles, by server index.
        span_end: First absolute step after the simulated span; an onset at or after it is
            unknown (null) because no data shows it.

    Returns:
        One row per incident (:data:`GROUND_TRUTH_SCHEMA`), sorted by precursor start then server.
    """
    b = batch.take(batch.start < span_end)
    onset = np.where((b.onset >= 0) & (b.onset < span_end), b.onset, -1)
    steps = {
        "precursor_start": b.start,
        "onset": onset,
        "peak": b.start + b.rise,
        "end": b.end,
        "recovered": b.recovered,
    }
    as_time = [(pl.col(c) * (contract.STEP_SECONDS * 1_000_000)).cast(pl.Datetime("us", "UTC")) for c in steps]
    frame = pl.DataFrame(
        {
            contract.SERVER: np.asarray(names, dtype=object)[b.server],
            contract.PROFILE: np.asarray(profiles, dtype=object)[b.server],
            "incident_type": np.asarray(INCIDENT_TYPES, dtype=object)[b.kind],
            "metric": np.asarray(PRIMARY_OF, dtype=object)[b.kind],
            "threshold": b.critical.astype(float),
            **{name: value.astype(np.int64) for name, value in steps.items()},
            "intensity": b.intensity.astype(float),
            "scenario": b.scenario,
        },
        schema_overrides=dict.fromkeys(
            [contract.SERVER, contract.PROFILE, "incident_type", "metric", "scenario"], pl.String
        ),
    )
    frame = frame.with_columns(pl.when(pl.col("onset") >= 0).then(pl.col("onset")).alias("onset")).with_columns(
        *as_time
    )
    frame = frame.sort("precursor_start", contract.SERVER).with_row_index("incident_id")
    return frame.select(list(GROUND_TRUTH_SCHEMA)).cast(pl.Schema(GROUND_TRUTH_SCHEMA))


def empty_ground_truth() -> pl.DataFrame:
    """Return an empty ground-truth table with :data:`GROUND_TRUTH_SCHEMA`."""
    return pl.DataFrame(schema=GROUND_TRUTH_SCHEMA)


def incident_counts(incidents: pl.DataFrame) -> dict[str, int]:
    """Return the number of incidents of every type (zero included), in :data:`INCIDENT_TYPES` order.

    Args:
        incidents: A ground-truth table.
    """
    counts = dict(incidents.group_by("incident_type").len().iter_rows())
    return {kind: int(counts.get(kind, 0)) for kind in INCIDENT_TYPES}
