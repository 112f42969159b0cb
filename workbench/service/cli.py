"""The daemons' commands: ``workbench serve`` (inference) and ``workbench stream`` (generator)."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.service.settings import ALERT_RULES, FORECAST_WORKERS
from workbench.simulator.scenarios import SCENARIO_NAMES

_PATH = click.Path(path_type=Path)
_LOG_LEVELS = click.Choice(["critical", "error", "warning", "info", "debug"])


@click.command()
@click.option("--bundle", type=_PATH, required=True, help="Bundle folder written by `workbench train`.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key-env", metavar="VAR", help="Environment variable holding the X-API-Key that writes need.")
@click.option(
    "--state-dir",
    type=_PATH,
    default=Path("state"),
    show_default=True,
    help="Append log and window snapshots: accepted records survive a crash and a restart needs no warm-up.",
)
@click.option("--no-state", is_flag=True, help="Keep nothing on disk (a restart starts from empty windows).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--interval", type=click.FloatRange(min=0.01), help="Seconds between forecasts (default: once per step).")
@click.option("--snapshot-every", type=click.FloatRange(min=0.5), default=60.0, show_default=True, help="Seconds.")
@click.option("--fsync/--no-fsync", default=True, show_default=True, help="fsync the log before acknowledging.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=8.0, show_default=True)
@click.option("--max-records", type=click.IntRange(min=1), default=20_000, show_default=True, help="Per request.")
@click.option("--thresholds", type=_PATH, help="YAML file of alert thresholds (default: the built-in table).")
@click.option(
    "--max-servers", type=click.IntRange(min=1), default=100_000, show_default=True,
    help="Most servers held; a new one beyond it evicts the one that sent least recently.",
)  # fmt: skip
@click.option(
    "--max-clock-skew", type=click.FloatRange(min=0), default=300.0, show_default=True,
    help="Seconds a record's timestamp may lie ahead of the daemon's clock; later ones are refused.",
)  # fmt: skip
@click.option(
    "--idle-hours", type=click.FloatRange(min=0.01), default=24.0, show_default=True,
    help="Evict a server that has sent nothing for this long (wall clock, not data time).",
)  # fmt: skip
@click.option(
    "--worker-timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
    help="Seconds to wait for one forecast before the worker is killed and started again.",
)  # fmt: skip
@click.option(
    "--forecast-worker",
    type=click.Choice(FORECAST_WORKERS),
    default=FORECAST_WORKERS[0],
    show_default=True,
    help="Run forecasts in a niced child process (requests never wait behind the model) or in a thread.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Torch threads for forecasts (default: every core in the worker process, half of them in a thread).",
)
@click.option(
    "--alert-rule",
    type=click.Choice(ALERT_RULES),
    default="auto",
    show_default=True,
    help="auto: the calibrated incident probability when the bundle has one, else the band edge.",
)
@click.option(
    "--alertmanager",
    "alertmanagers",
    metavar="URL",
    multiple=True,
    envvar="WORKBENCH_ALERTMANAGER",
    show_envvar=True,
    help="Alertmanager base URL (repeatable) that receives the active alerts after each forecast.",
)
@click.option(
    "--history-dir", type=_PATH,
    help="Keep accepted metrics, forecasts (30 min to 8 h ahead) and alert transitions as date-partitioned "
    "parquet here, read by GET /history [default: STATE_DIR/history; none with --no-state].",
)  # fmt: skip
@click.option("--no-history", is_flag=True, help="Keep no history (GET /history answers 404).")
@click.option(
    "--history-days", type=click.IntRange(1, 36_500), default=30, show_default=True,
    help="Days of history kept; older date partitions are deleted whole.",
)  # fmt: skip
@click.option("--log-level", type=_LOG_LEVELS, default="info", show_default=True)
def serve(
    bundle: Path,
    host: str,
    port: int,
    api_key_env: str | None,
    state_dir: Path,
    no_state: bool,
    device: str,
    interval: float | None,
    snapshot_every: float,
    fsync: bool,
    max_body_mb: float,
    max_records: int,
    thresholds: Path | None,
    max_servers: int,
    max_clock_skew: float,
    idle_hours: float,
    worker_timeout: float,
    forecast_worker: str,
    threads: int | None,
    alert_rule: str,
    alertmanagers: tuple[str, ...],
    history_dir: Path | None,
    no_history: bool,
    history_days: int,
    log_level: str,
) -> None:
    """Run the inference daemon: POST /feed/data in, forecasts, alerts and risk out.

    \b
    Endpoints: POST /feed/data, GET /predictions/current, GET /alerts/active, GET /health,
    GET /status, GET /history (the archive), WS /ws/predictions, GET /metrics (Prometheus);
    the API at /docs and /openapi.json. Stop with Ctrl-C or SIGTERM (a final snapshot is written).
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    from workbench.service.inference_app import create_app
    from workbench.service.runner import run_app
    from workbench.service.settings import InferenceSettings, MiB, api_key_from_env, configure_threads

    settings = InferenceSettings(
        bundle=bundle,
        host=host,
        port=port,
        api_key=api_key_from_env(api_key_env),
        state_dir=None if no_state else state_dir,
        device=None if device == "auto" else device,
        interval=interval,
        snapshot_seconds=snapshot_every,
        fsync=fsync,
        max_body_bytes=int(max_body_mb * MiB),
        max_records=max_records,
        thresholds=thresholds,
        max_servers=max_servers,
        max_future_seconds=max_clock_skew,
        idle_seconds=idle_hours * 3600.0,
        worker_reply_seconds=worker_timeout,
        threads=threads,
        forecast_worker=forecast_worker,
        log_level=log_level,
        alert_rule=alert_rule,
        alertmanager=tuple(alertmanagers),
        history_dir=_history_dir(history_dir, None if no_state else state_dir, no_history),
        history_days=history_days,
    )
    if settings.forecast_worker == "thread":
        configure_threads(settings.threads)
    app = create_app(settings)
    run_app(app, host=host, port=port, log_level=log_level)


def _history_dir(given: Path | None, state_dir: Path | None, off: bool) -> Path | None:
    """The history folder: ``--history-dir``, else ``STATE_DIR/history``; ``None`` with ``--no-history``."""
    if off:
        return None
    if given is not None:
        return given
    return state_dir / "history" if state_dir is not None else None


@click.command()
@click.option("--target", default="http://127.0.0.1:8000", show_default=True, help="Inference daemon base URL.")
@click.option("--servers", type=click.IntRange(1, 100_000), default=20, show_default=True, help="Fleet size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same fleet and data.")
@click.option("--tick", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds per 5-min step.")
@click.option("--scenario", type=click.Choice(SCENARIO_NAMES), default="healthy", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the scenario API.")
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option("--api-key-env", metavar="VAR", help="Environment variable holding the X-API-Key to send (and require).")
@click.option("--steps", type=click.IntRange(min=1), help="Stop streaming after this many steps (default: never).")
@click.option(
    "--history",
    type=click.IntRange(0, 100_000),
    default=0,
    show_default=True,
    metavar="STEPS",
    help="First send this many steps at once (in batches), so the daemon's warm-up takes seconds.",
)
@click.option("--log-level", type=_LOG_LEVELS, default="info", show_default=True)
def stream(
    target: str,
    servers: int,
    seed: int,
    tick: float,
    scenario: str,
    host: str,
    port: int,
    api_key_env: str | None,
    steps: int | None,
    history: int,
    log_level: str,
) -> None:
    """Run the generator daemon: stream a simulated fleet to TARGET's /feed/data.

    \b
    One 5-minute step of every server per TICK seconds; a step is retried with backoff until
    the target accepts it. Scenario control: POST /scenario/set {"scenario": "degrading"},
    GET /scenario/status.
    """  # noqa: D301 (click's no-rewrap marker is a real backspace)
    from workbench.service.generator_app import create_generator_app
    from workbench.service.runner import run_app
    from workbench.service.settings import GeneratorSettings, api_key_from_env

    settings = GeneratorSettings(
        target=target,
        servers=servers,
        seed=seed,
        tick=tick,
        scenario=scenario,
        host=host,
        port=port,
        api_key=api_key_from_env(api_key_env),
        steps=steps,
        history=history,
        log_level=log_level,
    )
    run_app(create_generator_app(settings), host=host, port=port, log_level=log_level)
