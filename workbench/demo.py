"""``workbench demo``: the live system in one command, stopped as one by Ctrl-C.

Starts the inference daemon (``workbench serve``), the generator stream (``workbench stream``,
which first sends ``history`` steps at once so forecasts appear within seconds) and the Voilà
dashboard (``workbench dashboard``) as child processes under a
:class:`~workbench.service.supervisor.Supervisor`, waits until each answers, prints the URLs and
the log files, and reports when the first TFT forecast is out. Ctrl-C or SIGTERM stops all three
and exits 0; a child that dies stops the others and exits non-zero with its log's tail.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from workbench.errors import BundleError, ConfigError, ServiceError
from workbench.forecast import SOURCE_TFT
from workbench.service.settings import DEFAULT_HOST, GENERATOR_PORT, INFERENCE_PORT, LOG_LEVELS
from workbench.simulator.scenarios import SCENARIO_NAMES

if TYPE_CHECKING:
    from workbench.service.supervisor import ChildSpec

DASHBOARD_PORT = 8866
FORECAST_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class DemoSettings:
    """Settings of ``workbench demo``.

    Attributes:
        bundle: Model bundle folder served by the daemon.
        host: Loopback (or other) address every service binds.
        daemon_port: Inference daemon port.
        generator_port: Generator daemon (scenario API) port.
        dashboard_port: Voilà port.
        servers: Simulated fleet size.
        seed: Seed of the simulated fleet.
        tick: Wall-clock seconds per 5-minute step.
        history: Steps sent at once before streaming (warm-up in seconds; 0: warm up live;
            ``None``: the bundle's window, all the daemon keeps; older steps would be refused).
        scenario: Scenario at the start.
        log_dir: Folder of the children's logs.
        notebook: Dashboard notebook (``None``: the dashboard command's default).
        start_timeout: Seconds each service has to answer.
        grace: Seconds each service has to stop after SIGINT (then SIGTERM, then SIGKILL).
        log_level: Log level of the two daemons.
        python: Interpreter that runs the children.
    """

    bundle: Path = Path("models/demo")
    host: str = DEFAULT_HOST
    daemon_port: int = INFERENCE_PORT
    generator_port: int = GENERATOR_PORT
    dashboard_port: int = DASHBOARD_PORT
    servers: int = 12
    seed: int = 0
    tick: float = 5.0
    history: int | None = None
    scenario: str = "healthy"
    log_dir: Path = Path("state/demo/logs")
    notebook: Path | None = None
    start_timeout: float = 180.0
    grace: float = 10.0
    log_level: str = "info"
    python: str = sys.executable

    @property
    def history_dir(self) -> Path:
        """The daemon's history archive, beside the logs (emptied when a demo starts)."""
        return self.log_dir.parent / "history"

    def __post_init__(self) -> None:
        problems = []
        ports = {"daemon_port": self.daemon_port, "generator_port": self.generator_port}
        ports["dashboard_port"] = self.dashboard_port
        for name, port in ports.items():
            if not isinstance(port, int) or not 1 <= port <= 65535:
                problems.append(f"{name}={port!r} must be an integer in [1, 65535]")
        if len(set(ports.values())) < 3:
            problems.append(f"the three ports must differ, got {sorted(ports.values())}")
        if not isinstance(self.servers, int) or not 1 <= self.servers <= 100_000:
            problems.append(f"servers={self.servers!r} must be an integer in [1, 100000]")
        if self.history is not None and (not isinstance(self.history, int) or not 0 <= self.history <= 100_000):
            problems.append(f"history={self.history!r} must be an integer in [0, 100000]")
        for name in ("tick", "start_timeout", "grace"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0 and (value > 0 or name == "tick")):
                problems.append(f"{name}={value!r} must be a number {'>= 0' if name == 'tick' else '> 0'}")
        if self.scenario not in SCENARIO_NAMES:
            problems.append(f"scenario={self.scenario!r}; allowed: {', '.join(SCENARIO_NAMES)}")
        if self.log_level not in LOG_LEVELS:
            problems.append(f"log_level={self.log_level!r}; allowed: {', '.join(LOG_LEVELS)}")
        if problems:
            raise ConfigError("demo settings: " + "; ".join(problems))

    def url(self, port: int) -> str:
        """Return ``http://HOST:PORT``."""
        return f"http://{self.host}:{port}"


def bundle_window(bundle: Path, default: int = 288) -> int:
    """Steps of history the bundle reads (``dataset.json``, no torch); ``default`` when unreadable."""
    try:
        return int(json.loads((bundle / "dataset.json").read_text())["max_encoder_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def demo_children(settings: DemoSettings) -> list[ChildSpec]:
    """Return the three :class:`~workbench.service.supervisor.ChildSpec` of the demo, in start order."""
    from workbench.service.supervisor import ChildSpec

    s = settings
    cli = [s.python, "-m", "workbench.cli"]
    daemon, generator, dashboard = s.url(s.daemon_port), s.url(s.generator_port), s.url(s.dashboard_port)
    serve = [*cli, "serve", "--bundle", str(s.bundle), "--host", s.host, "--port", str(s.daemon_port), "--no-state"]
    serve += ["--history-dir", str(s.history_dir)]  # the fan chart's "forecast from" overlay reads it
    stream = [*cli, "stream", "--target", daemon, "--servers", str(s.servers), "--seed", str(s.seed)]
    history = s.history if s.history is not None else bundle_window(s.bundle)
    stream += ["--tick", str(s.tick), "--history", str(history), "--scenario", s.scenario]
    stream += ["--host", s.host, "--port", str(s.generator_port)]
    board = [*cli, "dashboard", "--host", s.host, "--port", str(s.dashboard_port), "--daemon", daemon]
    board += ["--generator", generator, "--no-open"]
    if s.notebook is not None:
        board += ["--notebook", str(s.notebook)]
    return [
        ChildSpec("daemon", [*serve, "--log-level", s.log_level], ready_url=f"{daemon}/health"),
        ChildSpec("stream", [*stream, "--log-level", s.log_level], ready_url=f"{generator}/scenario/status"),
        ChildSpec("dashboard", board, ready_url=f"{dashboard}/", ready_method="HEAD"),
    ]


def check_can_start(settings: DemoSettings) -> None:
    """Refuse to start when the bundle is missing or a port is taken.

    Raises:
        BundleError: when ``settings.bundle`` holds no model.
        ServiceError: naming each port already in use.
    """
    from workbench.service.supervisor import free_port

    if not (settings.bundle / "model.safetensors").is_file():
        raise BundleError(f"{settings.bundle} is not a model bundle (no model.safetensors); run `make demo-model`")
    names = ("daemon_port", "generator_port", "dashboard_port")
    taken = [f"{n}={getattr(settings, n)}" for n in names if not free_port(settings.host, getattr(settings, n))]
    if taken:
        raise ServiceError(f"port(s) in use on {settings.host}: {', '.join(taken)} (another demo running?)")


class FirstForecast:
    """Poll ``/predictions/current`` until a TFT forecast is out, then say how long it took."""

    def __init__(self, daemon_url: str, echo: Callable[[str], None], started: float) -> None:
        self.url, self.echo, self.started = f"{daemon_url}/predictions/current", echo, started
        self.seen: float | None = None
        self._next = 0.0

    def __call__(self) -> None:
        """Check once a second until the first forecast (cheap no-op afterwards)."""
        now = time.monotonic()
        if self.seen is not None or now < self._next:
            return
        self._next = now + FORECAST_POLL_SECONDS
        ready = tft_servers(self.url)
        if ready:
            self.seen = now - self.started
            self.echo(f"first TFT forecasts after {self.seen:.0f} s ({ready} servers); the dashboard is live")


def tft_servers(url: str) -> int:
    """Return how many servers have a ``source="tft"`` forecast at ``url`` (0 when it does not answer)."""
    import httpx

    try:
        doc = httpx.get(url, timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return 0
    predictions = doc.get("predictions") or {}
    return sum(any(m.get("source") == SOURCE_TFT for m in metrics.values()) for metrics in predictions.values())


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = click.echo) -> float | None:
    """Run the demo until SIGINT/SIGTERM; return seconds to the first TFT forecast (``None``: not seen).

    Raises:
        ServiceError: when a service fails to start or dies (the others are stopped first).
        BundleError: when the bundle is missing.
    """
    from workbench.service.supervisor import Supervisor

    check_can_start(settings)
    shutil.rmtree(settings.history_dir, ignore_errors=True)  # each demo replays the same days afresh
    began = time.monotonic()
    supervisor = Supervisor(demo_children(settings), settings.log_dir, start_timeout=settings.start_timeout)
    watcher = FirstForecast(settings.url(settings.daemon_port), echo, began)
    with supervisor.signals_stop():
        try:
            echo(f"starting the demo; logs in {settings.log_dir}/")
            supervisor.start()
            if not supervisor.stopping.is_set():
                _announce(settings, echo, time.monotonic() - began)
                supervisor.watch(on_poll=watcher)
        finally:
            echo("stopping ...")
            codes = supervisor.stop()
            echo("stopped: " + ", ".join(f"{name} (exit {code})" for name, code in codes.items()))
    return watcher.seen


def _announce(settings: DemoSettings, echo: Callable[[str], None], took: float) -> None:
    s, logs = settings, settings.log_dir
    echo(f"all services up after {took:.0f} s:")
    echo(f"  dashboard         {s.url(s.dashboard_port)}/")
    echo(f"  inference daemon  {s.url(s.daemon_port)}/docs   (log {logs / 'daemon.log'})")
    echo(f"  generator         {s.url(s.generator_port)}/scenario/status   (log {logs / 'stream.log'})")
    echo(f"  dashboard log     {logs / 'dashboard.log'}")
    echo("Ctrl-C stops all three.")


_PATH = click.Path(path_type=Path)


@click.command("demo")
@click.option("--bundle", type=_PATH, default=Path("models/demo"), show_default=True, help="Model bundle folder.")
@click.option("--servers", type=click.IntRange(1, 100_000), default=12, show_default=True, help="Fleet size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulated fleet.")
@click.option("--tick", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds per 5-min step.")
@click.option(
    "--history",
    type=click.IntRange(0, 100_000),
    default=None,
    metavar="STEPS",
    help="Steps of past data sent at once, so TFT forecasts appear within seconds (default: the bundle's window).",
)
@click.option("--scenario", type=click.Choice(SCENARIO_NAMES), default="healthy", show_default=True)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address every service binds.")
@click.option("--daemon-port", type=click.IntRange(1, 65535), default=INFERENCE_PORT, show_default=True)
@click.option("--generator-port", type=click.IntRange(1, 65535), default=GENERATOR_PORT, show_default=True)
@click.option("--dashboard-port", type=click.IntRange(1, 65535), default=DASHBOARD_PORT, show_default=True)
@click.option("--log-dir", type=_PATH, default=Path("state/demo/logs"), show_default=True, help="Child logs.")
@click.option("--start-timeout", type=click.FloatRange(min=1), default=180.0, show_default=True, help="Seconds.")
def demo_command(**options: Any) -> None:
    """Run the live demo: inference daemon, generator stream and Voilà dashboard; Ctrl-C stops all.

    \b
    The daemon serves BUNDLE (nothing kept on disk: each run starts a fresh simulated fleet), the
    stream sends HISTORY steps at once and then one step per TICK, and the dashboard shows the
    fleet's forecasts, alerts and risk. Logs go to LOG_DIR/{daemon,stream,dashboard}.log.
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    known = {f.name for f in fields(DemoSettings)}
    run_demo(DemoSettings(**{k: v for k, v in options.items() if k in known}))
