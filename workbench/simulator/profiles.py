"""Profile-level defaults of the simulator: one table, :data:`PROFILE_DEFAULTS`, keyed by contract profile."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workbench import contract
from workbench.errors import ConfigError


def _metric(name: str) -> str:
    """Return a contract metric name, failing at import if the contract no longer has it."""
    if name not in contract.METRIC_BY_NAME:
        raise RuntimeError(f"the simulator needs contract metric {name!r}; contract has {contract.METRIC_NAMES}")
    return name


# The simulator's meaning of each contract metric (the one place that spells them).
CPU = _metric("cpu_pct")
MEM = _metric("mem_pct")
DISK = _metric("disk_pct")
DISK_IO = _metric("disk_io_mb_s")
NET_IN = _metric("net_in_mb_s")
NET_OUT = _metric("net_out_mb_s")
LATENCY = _metric("latency_ms")
ERROR_RATE = _metric("error_rate")


@dataclass(frozen=True)
class Levels:
    """Typical value of each metric for a server at nominal load (seasonal factor 1).

    Attributes:
        cpu: CPU utilisation, %.
        mem: Memory used, %.
        disk: Filesystem used right after a cleanup, %.
        disk_io: Disk throughput, MB/s.
        net_in: Network received, MB/s.
        net_out: Network transmitted, MB/s.
        latency: Request latency of an idle server, ms.
        error_rate: Fraction of failed requests.
    """

    cpu: float
    mem: float
    disk: float
    disk_io: float
    net_in: float
    net_out: float
    latency: float
    error_rate: float

    def by_metric(self) -> dict[str, float]:
        """Return the levels keyed by contract metric name."""
        return {
            CPU: self.cpu,
            MEM: self.mem,
            DISK: self.disk,
            DISK_IO: self.disk_io,
            NET_IN: self.net_in,
            NET_OUT: self.net_out,
            LATENCY: self.latency,
            ERROR_RATE: self.error_rate,
        }


@dataclass(frozen=True)
class ProfileDefaults:
    """Defaults shared by the servers of one profile.

    Attributes:
        weight: Share of the fleet (relative; normalised over all profiles).
        digits: Digits of the running number in server names (widened when the count needs it).
        levels: Typical metric values at nominal load.
        diurnal_amplitude: Relative swing of load around nominal over a day (0 = flat).
        diurnal_sharpness: How narrow the daily peak is (von Mises concentration).
        peak_hour: UTC hour of the daily peak.
        weekend_factor: Load multiplier on Saturdays and Sundays (1 = no weekly pattern).
        noise: Relative noise level of load and metrics.
        disk_fill_per_day: Filesystem growth, percentage points per day.
        cleanup_days: Mean number of days between filesystem cleanups.
    """

    weight: float
    digits: int
    levels: Levels
    diurnal_amplitude: float
    diurnal_sharpness: float
    peak_hour: float
    weekend_factor: float
    noise: float
    disk_fill_per_day: float
    cleanup_days: float

    def __post_init__(self) -> None:
        checks = {
            "weight": self.weight > 0,
            "digits": 1 <= self.digits <= 8,
            "diurnal_amplitude": 0 <= self.diurnal_amplitude < 1,
            "diurnal_sharpness": self.diurnal_sharpness > 0,
            "peak_hour": 0 <= self.peak_hour < 24,
            "weekend_factor": 0 < self.weekend_factor <= 2,
            "noise": 0 <= self.noise < 1,
            "disk_fill_per_day": self.disk_fill_per_day >= 0,
            "cleanup_days": self.cleanup_days >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"ProfileDefaults out of range: {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")


# Levels(cpu %, mem %, disk %, disk_io MB/s, net_in MB/s, net_out MB/s, latency ms, error_rate)
PROFILE_DEFAULTS: Mapping[str, ProfileDefaults] = {
    "ml_compute": ProfileDefaults(
        0.12, 4, Levels(68, 62, 50, 30, 15, 5, 18, 0.001),
        diurnal_amplitude=0.12, diurnal_sharpness=1.0, peak_hour=22, weekend_factor=1.0, noise=0.06,
        disk_fill_per_day=1.5, cleanup_days=7,
    ),
    "database": ProfileDefaults(
        0.15, 3, Levels(30, 74, 58, 60, 20, 30, 6, 0.0005),
        diurnal_amplitude=0.45, diurnal_sharpness=2.0, peak_hour=13, weekend_factor=0.65, noise=0.05,
        disk_fill_per_day=0.8, cleanup_days=14,
    ),
    "web_api": ProfileDefaults(
        0.30, 3, Levels(34, 55, 40, 6, 40, 60, 35, 0.002),
        diurnal_amplitude=0.55, diurnal_sharpness=2.5, peak_hour=14, weekend_factor=0.55, noise=0.08,
        disk_fill_per_day=1.0, cleanup_days=5,
    ),
    "conductor_mgmt": ProfileDefaults(
        0.06, 2, Levels(18, 45, 35, 4, 5, 5, 25, 0.001),
        diurnal_amplitude=0.30, diurnal_sharpness=2.0, peak_hour=9, weekend_factor=0.75, noise=0.05,
        disk_fill_per_day=0.5, cleanup_days=10,
    ),
    "data_ingest": ProfileDefaults(
        0.12, 3, Levels(40, 50, 62, 80, 60, 15, 30, 0.003),
        diurnal_amplitude=0.65, diurnal_sharpness=4.0, peak_hour=2, weekend_factor=1.0, noise=0.10,
        disk_fill_per_day=3.0, cleanup_days=3,
    ),
    "risk_analytics": ProfileDefaults(
        0.10, 3, Levels(42, 60, 45, 25, 25, 10, 30, 0.001),
        diurnal_amplitude=0.60, diurnal_sharpness=3.0, peak_hour=16, weekend_factor=0.40, noise=0.07,
        disk_fill_per_day=1.2, cleanup_days=7,
    ),
    "generic": ProfileDefaults(
        0.15, 3, Levels(25, 48, 40, 10, 10, 10, 30, 0.001),
        diurnal_amplitude=0.35, diurnal_sharpness=2.0, peak_hour=14, weekend_factor=0.70, noise=0.07,
        disk_fill_per_day=0.8, cleanup_days=7,
    ),
}  # fmt: skip

if set(PROFILE_DEFAULTS) != set(contract.PROFILES):
    raise RuntimeError(f"PROFILE_DEFAULTS must cover exactly the contract profiles {contract.PROFILES}")
