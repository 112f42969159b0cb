"""From seasonal load to the eight contract metrics, with cross-metric coupling.

Everything works on ``(T, S)`` arrays: ``T`` steps of ``S`` servers. The load comes first
(:func:`nominal_load`); a state or incident layer may scale it before :func:`derive_metrics`
turns it into metrics, so that an incident moves every coupled metric consistently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from workbench import contract
from workbench.simulator import patterns
from workbench.simulator.fleet import Fleet
from workbench.simulator.noise import DayNoise
from workbench.simulator.profiles import CPU, DISK, DISK_IO, ERROR_RATE, LATENCY, MEM, NET_IN, NET_OUT


@dataclass(frozen=True)
class Coupling:
    """How metrics depend on load and on each other (fleet-wide constants).

    Attributes:
        cpu_noise: White-noise share of CPU, relative to the server's noise level.
        mem_load: Relative change of memory per unit of load above nominal.
        mem_wander: Smooth memory wander, relative to the memory level and noise level.
        io_exponent: Disk throughput grows as ``load ** io_exponent``.
        net_out_exponent: Network out grows as ``load ** net_out_exponent``.
        cpu_saturation: CPU fraction where queueing latency stops growing (keeps it finite).
        io_saturation: Disk utilisation where its latency term stops growing.
        io_latency_weight: Weight of disk queueing in latency.
        mem_pressure_start: Memory % above which the error rate starts to rise.
        mem_pressure_errors: Error rate added at 100 % memory.
        soft_cap_width: Width of the smooth approach to 100 % for CPU, memory and disk.
    """

    cpu_noise: float = 0.3
    mem_load: float = 0.12
    mem_wander: float = 0.5
    io_exponent: float = 1.2
    net_out_exponent: float = 1.1
    cpu_saturation: float = 0.97
    io_saturation: float = 0.95
    io_latency_weight: float = 0.5
    mem_pressure_start: float = 85.0
    mem_pressure_errors: float = 0.05
    soft_cap_width: float = 15.0


COUPLING = Coupling()


@dataclass(frozen=True, eq=False)
class Effects:
    """What states and incidents do to the derived metrics; ``None`` or absent leaves a metric alone.

    Attributes:
        io: Disk throughput multiplier, ``(T, S)``.
        latency: Latency multiplier, ``(T, S)``.
        errors: Error-rate multiplier, ``(T, S)``.
        offline: Where a server is down, ``(T, S)``: every metric but ``disk_pct`` reads 0.
        ceilings: Per metric, ``(knee, ceiling)`` per server, ``(S,)``: values above the knee
            bend smoothly so that they stay below the ceiling (keeps the background under critical).
        blend: Per metric, the cells an incident pulls towards its target.
    """

    io: np.ndarray | None = None
    latency: np.ndarray | None = None
    errors: np.ndarray | None = None
    offline: np.ndarray | None = None
    ceilings: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    blend: Mapping[str, Pull] = field(default_factory=dict)

    def primary(self, metric: str, values: np.ndarray) -> np.ndarray:
        """Bend ``values`` of ``metric`` under its ceiling, then pull them towards their targets.

        Args:
            metric: Contract metric name.
            values: Fresh ``(T, S)`` values; changed in place and returned.
        """
        if metric in self.ceilings:
            knee, ceiling = self.ceilings[metric]
            values = _bend(values, knee, ceiling - knee)
        pull = self.blend.get(metric)
        if pull is not None and pull.rows.size:
            current = values[pull.rows, pull.cols]
            values[pull.rows, pull.cols] = current + pull.weight * (pull.target - current)
        return values


@dataclass(frozen=True, eq=False)
class Pull:
    """Cells of a ``(T, S)`` metric that move ``weight`` of the way to ``target`` (parallel arrays).

    Attributes:
        rows: Step index of each cell.
        cols: Server index of each cell.
        weight: Share of the way to the target, in ``[0, 1]``.
        target: Value pulled towards.
    """

    rows: np.ndarray
    cols: np.ndarray
    weight: np.ndarray
    target: np.ndarray


NO_EFFECTS = Effects()


def seasonal_factor(t: np.ndarray, fleet: Fleet) -> np.ndarray:
    """Return each server's daily and weekly load multiplier, shape ``(T, S)``.

    Args:
        t: Epoch seconds, shape ``(T,)``.
        fleet: The servers.
    """
    seasonal = patterns.diurnal(t, fleet.peak_hour, fleet.diurnal_amplitude, fleet.diurnal_sharpness)
    return seasonal * patterns.weekly(t, fleet.weekend_factor)


def nominal_load(t: np.ndarray, fleet: Fleet, noise: DayNoise, seasonal: np.ndarray | None = None) -> np.ndarray:
    """Return each server's load relative to nominal (1 = typical): seasonality times smooth noise.

    Args:
        t: Epoch seconds, shape ``(T,)``.
        fleet: The servers.
        noise: Noise of the same ``T`` steps.
        seasonal: :func:`seasonal_factor` of ``t`` when already computed.
    """
    if seasonal is None:
        seasonal = seasonal_factor(t, fleet)
    sigma = fleet.noise[None, :]
    return seasonal * np.exp(sigma * noise.ar["load"] - 0.5 * sigma**2)


def derive_metrics(
    t: np.ndarray,
    load: np.ndarray,
    fleet: Fleet,
    noise: DayNoise,
    coupling: Coupling = COUPLING,
    effects: Effects = NO_EFFECTS,
) -> dict[str, np.ndarray]:
    """Return every contract metric, shape ``(T, S)``, clipped to the contract's ranges.

    Primary metrics pass through :meth:`Effects.primary` before the metrics that depend on them
    (latency on CPU, error rate on memory), so that an incident moves its coupled metrics too;
    latency passes through it after its state and incident multipliers, so that they stay under
    its ceiling as well.

    Args:
        t: Epoch seconds, shape ``(T,)``.
        load: Relative load, shape ``(T, S)``.
        fleet: The servers.
        noise: Noise of the same ``T`` steps.
        coupling: Coupling constants.
        effects: State and incident effects.
    """
    level = {m: fleet.levels[m][None, :] for m in contract.METRIC_NAMES}
    sigma = fleet.noise[None, :]
    white = noise.white
    cpu = _soft_cap(level[CPU] * load * (1.0 + coupling.cpu_noise * sigma * white[CPU]), 100.0, coupling)
    cpu = effects.primary(CPU, cpu)
    mem = effects.primary(MEM, _memory(t, load, fleet, noise, coupling))
    disk_io = _scaled(
        level[DISK_IO] * load**coupling.io_exponent * np.exp(sigma * noise.ar["io"] + 0.2 * sigma * white[DISK_IO]),
        effects.io,
    )
    net = np.exp(sigma * noise.ar["net"])
    errors = _scaled(_error_rate(load, mem, fleet, noise, coupling), effects.errors)
    metrics = {
        CPU: cpu,
        MEM: mem,
        DISK: effects.primary(DISK, _disk(t, fleet, noise, coupling)),
        DISK_IO: disk_io,
        NET_IN: level[NET_IN] * load * net * np.exp(0.3 * sigma * white[NET_IN]),
        NET_OUT: level[NET_OUT] * load**coupling.net_out_exponent * net * np.exp(0.3 * sigma * white[NET_OUT]),
        LATENCY: effects.primary(LATENCY, _scaled(_latency(cpu, disk_io, fleet, noise, coupling), effects.latency)),
        ERROR_RATE: effects.primary(ERROR_RATE, errors),
    }
    if effects.offline is not None and effects.offline.any():
        for name in metrics:
            if name != DISK:
                metrics[name] = np.where(effects.offline, 0.0, metrics[name])
    return {m.name: np.clip(metrics[m.name], m.low, np.inf if m.high is None else m.high) for m in contract.METRICS}


def _scaled(values: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    return values if factor is None else values * factor


def _memory(t: np.ndarray, load: np.ndarray, fleet: Fleet, noise: DayNoise, coupling: Coupling) -> np.ndarray:
    """Memory: level, a little load, a garbage-collection sawtooth and slow wander."""
    level = fleet.levels[MEM][None, :]
    gc = fleet.gc_amplitude[None, :] * patterns.sawtooth(t, fleet.gc_period_s, fleet.gc_phase_s)
    wander = coupling.mem_wander * level * fleet.noise[None, :] * noise.ar["mem"]
    mem = level * (1.0 + coupling.mem_load * (load - 1.0)) + gc + wander + 0.3 * noise.white[MEM]
    return _soft_cap(mem, 100.0, coupling)


def _disk(t: np.ndarray, fleet: Fleet, noise: DayNoise, coupling: Coupling) -> np.ndarray:
    """Filesystem use: fills steadily, drops back at each periodic cleanup."""
    period_s = fleet.cleanup_days * patterns.SECONDS_PER_DAY
    phase_s = fleet.cleanup_phase_days * patterns.SECONDS_PER_DAY
    filled = (fleet.disk_fill_per_day * fleet.cleanup_days)[None, :] * patterns.sawtooth(t, period_s, phase_s)
    disk = fleet.levels[DISK][None, :] + filled + 0.05 * noise.white[DISK]
    return _soft_cap(disk, 100.0, coupling)


def _latency(cpu: np.ndarray, disk_io: np.ndarray, fleet: Fleet, noise: DayNoise, coupling: Coupling) -> np.ndarray:
    """Latency: queueing on CPU (``1 / (1 - utilisation)``) and on disk, with log-normal jitter."""
    cpu_queue = 1.0 / (1.0 - np.minimum(cpu / 100.0, coupling.cpu_saturation))
    io_util = np.minimum(disk_io / fleet.io_capacity[None, :], coupling.io_saturation)
    io_queue = 1.0 + coupling.io_latency_weight * io_util / (1.0 - io_util)
    jitter = np.exp(0.5 * fleet.noise[None, :] * noise.white[LATENCY])
    return fleet.levels[LATENCY][None, :] * cpu_queue * io_queue * jitter


def _error_rate(load: np.ndarray, mem: np.ndarray, fleet: Fleet, noise: DayNoise, coupling: Coupling) -> np.ndarray:
    """Error rate: a load-dependent floor plus a steep rise as memory nears full."""
    floor = fleet.levels[ERROR_RATE][None, :] * (0.5 + 0.5 * load) * np.exp(0.5 * noise.white[ERROR_RATE])
    pressure = np.clip((mem - coupling.mem_pressure_start) / (100.0 - coupling.mem_pressure_start), 0.0, 1.0)
    return floor + coupling.mem_pressure_errors * pressure**2


def _soft_cap(x: np.ndarray, cap: float, coupling: Coupling) -> np.ndarray:
    """Leave values below ``cap - width`` alone and bend larger ones smoothly towards ``cap``."""
    return _bend(x, cap - coupling.soft_cap_width, coupling.soft_cap_width)


def _bend(x: np.ndarray, knee: np.ndarray | float, width: np.ndarray | float) -> np.ndarray:
    """Bend values of ``x`` above ``knee`` (scalar or per server) to stay below ``knee + width``, in place."""
    knees = np.broadcast_to(np.asarray(knee, dtype=float), x.shape[1:])
    widths = np.broadcast_to(np.asarray(width, dtype=float), x.shape[1:])
    rows, cols = np.nonzero(x > knees[None, :])
    k, w = knees[cols], widths[cols]
    x[rows, cols] = k + w * np.tanh((x[rows, cols] - k) / w)
    return x
