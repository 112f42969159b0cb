"""``workbench dashboard``: serve ``notebooks/dashboard.ipynb`` with Voilà on 127.0.0.1:8866.

The command line is built as a list by :func:`voila_command` (tested without launching), the
daemons' addresses reach the notebook's kernel through environment variables
(:func:`voila_environment`), and :func:`run` forwards Ctrl-C and SIGTERM to Voilà, which shuts
its kernels down and exits. This module imports no widget library, so the CLI starts quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from workbench.dashboard import defaults as d
from workbench.errors import ConfigError

DEFAULT_NOTEBOOK = Path("notebooks/dashboard.ipynb")
DEFAULT_PORT = 8866
DEFAULT_HOST = "127.0.0.1"
# Voilà serves only images next to the notebook; never the notebook, code or data files.
FILE_ALLOWLIST = r"['.*\.(png|svg)']"
CULL_IDLE_SECONDS = 600  # kernels of closed pages are shut down after this long without activity
STOP_SECONDS = 15.0


@dataclass(frozen=True)
class DashboardSettings:
    """Where and how to serve the dashboard.

    Attributes:
        notebook: The app notebook.
        host: Address Voilà binds (127.0.0.1: this machine only).
        port: Port Voilà listens on (it fails rather than moving to another one).
        daemon_url: Inference daemon base URL handed to the kernel.
        generator_url: Generator daemon base URL handed to the kernel.
        api_key: ``X-API-Key`` for scenario switches (``None``: none).
        open_browser: Open the page in a browser once Voilà is up.
    """

    notebook: Path = DEFAULT_NOTEBOOK
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    daemon_url: str = d.DAEMON_URL
    generator_url: str = d.GENERATOR_URL
    api_key: str | None = None
    open_browser: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if Path(self.notebook).suffix != ".ipynb":
            raise ConfigError(f"notebook must be a .ipynb file, got {self.notebook}")
        for name in ("daemon_url", "generator_url"):
            url = getattr(self, name)
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name} must start with http:// or https://, got {url!r}")

    @property
    def url(self) -> str:
        """The dashboard's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def voila_command(settings: DashboardSettings, python: str = sys.executable) -> list[str]:
    """Return the Voilà command line for ``settings`` (run it with :func:`run`)."""
    command = [
        python,
        "-m",
        "voila",
        str(settings.notebook),
        f"--port={settings.port}",
        f"--Voila.ip={settings.host}",
        "--Voila.port_retries=0",
        "--theme=light",
        "--show_tracebacks=False",
        "--strip_sources=True",
        f"--VoilaConfiguration.file_allowlist={FILE_ALLOWLIST}",
        f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_SECONDS}",
        "--MappingKernelManager.cull_interval=60",
    ]
    if not settings.open_browser:
        command.append("--no-browser")
    return command


def voila_environment(settings: DashboardSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment Voilà (and so each page's kernel) runs with: the daemons' addresses."""
    env = dict(os.environ if base is None else base)
    env[d.DAEMON_URL_ENV] = settings.daemon_url
    env[d.GENERATOR_URL_ENV] = settings.generator_url
    if settings.api_key is not None:
        env[d.API_KEY_ENV] = settings.api_key
    return env


def run(settings: DashboardSettings) -> int:
    """Run Voilà until it exits or a SIGINT/SIGTERM arrives; return its exit status.

    Voilà runs in its own session, so a Ctrl-C in the terminal reaches it once, forwarded by
    this process; a second signal, or Voilà not stopping within a few seconds, kills it.

    Raises:
        ConfigError: when the notebook does not exist.
    """
    if not Path(settings.notebook).is_file():
        where = f"{settings.notebook} (run from the repository root or pass --notebook)"
        raise ConfigError(f"dashboard notebook not found: {where}")
    process = subprocess.Popen(voila_command(settings), env=voila_environment(settings), start_new_session=True)
    signals: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if len(signals) > 1 else signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return process.wait(timeout=STOP_SECONDS if signals else None)
            except subprocess.TimeoutExpired:
                process.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@click.command("dashboard")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--daemon", metavar="URL", help=f"Inference daemon base URL [default: ${d.DAEMON_URL_ENV} or :8000].")
@click.option("--generator", metavar="URL", help=f"Generator base URL [default: ${d.GENERATOR_URL_ENV} or :8001].")
@click.option("--api-key-env", metavar="VAR", help="Environment variable holding the generator's X-API-Key.")
@click.option(
    "--notebook", type=click.Path(path_type=Path), default=DEFAULT_NOTEBOOK, show_default=True, help="App notebook."
)
@click.option("--open/--no-open", "open_browser", default=False, show_default=True, help="Open a browser.")
def dashboard_command(
    port: int,
    host: str,
    daemon: str | None,
    generator: str | None,
    api_key_env: str | None,
    notebook: Path,
    open_browser: bool,
) -> None:
    """Serve the live fleet dashboard with Voilà (stop with Ctrl-C).

    The page polls the inference daemon (forecasts, alerts, risk, warm-up) and switches the
    generator daemon's scenario; start them with `workbench serve` and `workbench stream`.
    """
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise ConfigError(f"--api-key-env {api_key_env}: that environment variable is empty or unset")
    daemon = daemon or os.environ.get(d.DAEMON_URL_ENV) or d.DAEMON_URL
    generator = generator or os.environ.get(d.GENERATOR_URL_ENV) or d.GENERATOR_URL
    settings = DashboardSettings(notebook, host, port, daemon, generator, api_key, open_browser)
    click.echo(f"Dashboard: {settings.url}  (inference daemon {daemon}, generator {generator})")
    click.echo("Stop with Ctrl-C.")
    code = run(settings)
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise click.ClickException(f"Voilà exited with status {code}")
