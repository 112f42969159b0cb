"""Settings of the two daemons: small frozen dataclasses that validate themselves.

Every check names the setting, the value it got and what is allowed, so a typo on the command
line becomes one clear line (a :class:`~workbench.errors.ConfigError`), not a traceback.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from workbench import contract as c
from workbench.alerts import RULE_NAMES
from workbench.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
INFERENCE_PORT = 8000
GENERATOR_PORT = 8001
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MiB = 1024 * 1024


def _positive(name: str, value: float, *, allow_zero: bool = False) -> list[str]:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    return [] if ok else [f"{name}={value!r} must be a finite number {'>= 0' if allow_zero else '> 0'}"]


def _integer(name: str, value: int, low: int, high: int | None = None) -> list[str]:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    return [] if ok else [f"{name}={value!r} must be an integer {allowed}"]


def _common(host: str, port: int, log_level: str) -> list[str]:
    problems = []
    if not host:
        problems.append("host must not be empty")
    problems += _integer("port", port, 0, 65535)
    if log_level not in LOG_LEVELS:
        problems.append(f"log_level={log_level!r}; allowed: {', '.join(LOG_LEVELS)}")
    return problems


def _is_http_url(value: str) -> bool:
    url = urlparse(value)
    return url.scheme in ("http", "https") and bool(url.netloc)


def _raise(what: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"{what} settings: " + "; ".join(problems))


def api_key_from_env(variable: str | None) -> str | None:
    """Return the API key held in environment variable ``variable`` (``None`` when not asked for).

    Raises:
        ConfigError: when the variable is named but unset or empty (a daemon must never run
            open by mistake when a key was meant).
    """
    if not variable:
        return None
    key = os.environ.get(variable, "")
    if not key.strip():
        raise ConfigError(f"--api-key-env {variable}: the environment variable is unset or empty")
    return key.strip()


ALERT_RULES = ("auto", *RULE_NAMES)
FORECAST_WORKERS = ("process", "thread")


@dataclass(frozen=True)
class InferenceSettings:
    """Settings of the inference daemon (``workbench serve``).

    Attributes:
        bundle: Model bundle folder.
        host: Address to bind (loopback unless told otherwise).
        port: TCP port.
        api_key: Key that writes must present in ``X-API-Key`` (``None``: writes are open).
        state_dir: Folder of the append log and window snapshots (``None``: nothing persisted).
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when present).
        interval: Seconds between forecasts; ``None`` forecasts once per new step of data.
        poll_seconds: How often the background predictor looks for new data.
        snapshot_seconds: Seconds between window snapshots (the log is replayed after the last one).
        snapshot_log_bytes: Take a snapshot early once the current log segment is this large.
        fsync: ``os.fsync`` the log before each acknowledgement (survives power loss, not only a crash).
        max_body_bytes: Largest ``POST /feed/data`` body; larger ones get 413.
        max_records: Most records in one body; more get 413.
        max_future_seconds: Refuse timestamps this far ahead of the daemon's clock (``None``: no
            limit): the clock skew allowed to a client.
        idle_seconds: Evict a server that has sent nothing for this long (wall clock).
        worker_reply_seconds: Longest wait for the forecast worker's answer before it is killed and
            started again.
        batch_size: Servers per network call (``None``: the engine's default for the device).
        max_gap_steps: Longest gap carried forward before a server's warm-up restarts.
        max_servers: Most servers held.
        thresholds: YAML file of alert thresholds (``None``: the defaults).
        threads: Torch threads for forecasts. In the forecast worker process (``None``: every
            core; the worker is niced, so requests come first); in a thread of the daemon
            (``None``: half the cores, at least 1; applied by :func:`configure_threads`).
        forecast_worker: ``process``: forecasts run in a child process, so the model never holds
            the request path's GIL or cores; ``thread``: in a thread of the daemon (tests,
            debugging).
        log_level: Uvicorn and workbench log level.
        alert_rule: ``auto`` (the calibrated rule when the bundle has an incident calibration,
            else the band edge) or one of :data:`workbench.alert_rules.RULE_NAMES`.
        alertmanager: Alertmanager base URLs that receive the active alerts after each forecast
            (empty: none; see :mod:`workbench.service.alertmanager`).
        history_dir: Folder of the history archive: accepted metrics, forecasts at a few horizons
            and alert transitions as date-partitioned parquet (``None``: no history kept; see
            :mod:`workbench.service.archive`).
        history_days: Days of history kept before the newest data; older date partitions are deleted.
        history_flush_seconds: Seconds between writes of the archive's buffered rows.
    """

    bundle: Path
    host: str = DEFAULT_HOST
    port: int = INFERENCE_PORT
    api_key: str | None = field(default=None, repr=False)
    state_dir: Path | None = Path("state")
    device: str | None = None
    interval: float | None = None
    poll_seconds: float = 0.1
    snapshot_seconds: float = 60.0
    snapshot_log_bytes: int = 256 * MiB
    fsync: bool = True
    max_body_bytes: int = 8 * MiB
    max_records: int = 20_000
    max_future_seconds: float | None = 300.0
    idle_seconds: float = 86_400.0
    worker_reply_seconds: float = 120.0
    batch_size: int | None = None
    max_gap_steps: int = c.MAX_GAP_STEPS
    max_servers: int = 100_000
    thresholds: Path | None = None
    threads: int | None = None
    forecast_worker: str = "process"
    log_level: str = "info"
    alert_rule: str = "auto"
    alertmanager: tuple[str, ...] = ()
    history_dir: Path | None = None
    history_days: int = 30
    history_flush_seconds: float = 60.0

    def __post_init__(self) -> None:
        problems = _common(self.host, self.port, self.log_level)
        problems += [f"alertmanager={u!r} must be an http(s) URL" for u in self.alertmanager if not _is_http_url(u)]
        if self.alert_rule not in ALERT_RULES:
            problems.append(f"alert_rule={self.alert_rule!r}; allowed: {', '.join(ALERT_RULES)}")
        if self.threads is not None:
            problems += _integer("threads", self.threads, 1)
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            problems.append(f"device={self.device!r}; allowed: cpu, cuda, cuda:N (default: CUDA when present)")
        if self.interval is not None:
            problems += _positive("interval", self.interval)
        for name in ("poll_seconds", "snapshot_seconds", "idle_seconds", "worker_reply_seconds"):
            problems += _positive(name, getattr(self, name))
        for name in ("snapshot_log_bytes", "max_body_bytes", "max_records", "max_servers"):
            problems += _integer(name, getattr(self, name), 1)
        if self.batch_size is not None:
            problems += _integer("batch_size", self.batch_size, 1)
        if self.forecast_worker not in FORECAST_WORKERS:
            problems.append(f"forecast_worker={self.forecast_worker!r}; allowed: {', '.join(FORECAST_WORKERS)}")
        problems += _integer("max_gap_steps", self.max_gap_steps, 0)
        if self.max_future_seconds is not None:
            problems += _positive("max_future_seconds", self.max_future_seconds, allow_zero=True)
        if self.api_key is not None and not self.api_key:
            problems.append("api_key must not be empty (use None for no key)")
        problems += _integer("history_days", self.history_days, 1, 36_500)
        problems += _positive("history_flush_seconds", self.history_flush_seconds)
        _raise("inference daemon", problems)


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads for this process and return the number set.

    The forecast runs beside the request handlers; with more OpenMP threads than idle cores,
    spinning threads slow a 1,000-server forecast down a hundredfold (measured on 2 busy cores:
    42 s with 2 threads, 0.5 s with 1). The default leaves half the cores to the rest.

    Args:
        threads: Threads to use (``None``: half the cores, at least 1).
    """
    import torch

    count = threads if threads is not None else max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(count)
    return count


@dataclass(frozen=True)
class GeneratorSettings:
    """Settings of the generator daemon (``workbench stream``).

    Attributes:
        target: Base URL of the inference daemon (``/feed/data`` is appended).
        servers: Fleet size.
        seed: Seed of the simulated fleet.
        tick: Wall-clock seconds per 5-minute step.
        scenario: Scenario at the start.
        host: Address to bind.
        port: TCP port of the scenario API.
        api_key: Key sent as ``X-API-Key`` to the target, and required by ``POST /scenario/set``.
        timeout: Seconds to wait for one POST.
        max_backoff: Longest pause between retries of one step.
        steps: Stop after this many live steps, not counting the history (``None``: run until stopped).
        history: Steps sent at once before the paced streaming starts (0: none).
        history_batch_records: Most records in one history POST (keep under the target's limit).
        log_level: Uvicorn and workbench log level.
    """

    target: str = f"http://{DEFAULT_HOST}:{INFERENCE_PORT}"
    servers: int = 20
    seed: int = 0
    tick: float = 5.0
    scenario: str = "healthy"
    host: str = DEFAULT_HOST
    port: int = GENERATOR_PORT
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    max_backoff: float = 10.0
    steps: int | None = None
    history: int = 0
    history_batch_records: int = 5_000
    log_level: str = "info"

    def __post_init__(self) -> None:
        from workbench.simulator.scenarios import SCENARIO_NAMES

        problems = _common(self.host, self.port, self.log_level)
        url = urlparse(self.target)
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(f"target={self.target!r} must be an http(s) URL such as http://127.0.0.1:8000")
        problems += _integer("servers", self.servers, 1, 100_000)
        problems += _positive("tick", self.tick, allow_zero=True)
        problems += _positive("timeout", self.timeout) + _positive("max_backoff", self.max_backoff)
        if self.scenario not in SCENARIO_NAMES:
            problems.append(f"scenario={self.scenario!r}; allowed: {', '.join(SCENARIO_NAMES)}")
        if self.steps is not None:
            problems += _integer("steps", self.steps, 1)
        problems += _integer("history", self.history, 0, 100_000)
        problems += _integer("history_batch_records", self.history_batch_records, 1)
        _raise("generator daemon", problems)

    @property
    def feed_url(self) -> str:
        """The target's ``/feed/data`` URL."""
        return self.target.rstrip("/") + "/feed/data"
