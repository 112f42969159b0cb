"""The ``workbench forward --prometheus`` command (the loop is :mod:`workbench.service.prometheus_source`)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import click
import httpx

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.service.prometheus_source import (
    DEFAULT_QUERIES,
    FEED_PATH,
    FeedClient,
    PrometheusForwarder,
    parse_query_options,
)

log = logging.getLogger("workbench.service.prometheus_source")


def _help() -> str:
    queries = "\n".join(f"  {metric:<13} {query}" for metric, query in DEFAULT_QUERIES.items())
    return "\n".join(
        [
            "Forward metrics from Prometheus (node_exporter) to the inference daemon's POST /feed/data.",
            "",
            "Every INTERVAL seconds the newest complete 5-minute steps are read with GET /api/v1/query_range"
            " (step 300 s, one PromQL query per contract metric; the step starting at S is evaluated at"
            " S + 5 min) and the values not sent yet are posted to DAEMON/feed/data, retried with back-off"
            " while the daemon is unreachable or answers 5xx. Each series' --instance-label becomes the"
            " server name, without its :port. What was sent is remembered in memory only: a restart"
            " sends the last --backfill minutes again, which the daemon adds to the same steps.",
            "",
            "\b",
            "Default queries (replace one with --query METRIC=PROMQL, drop one with --query METRIC=):",
            queries,
            "latency_ms and error_rate have no default: they are sent only when --query gives one.",
            "",
            "\b",
            "Example:",
            "  workbench forward --prometheus http://127.0.0.1:9090 --daemon http://127.0.0.1:8000",
        ]
    )


_LOG_LEVELS = click.Choice(["critical", "error", "warning", "info", "debug"])


@click.command(help=_help())
@click.option("--prometheus", "prometheus_url", metavar="URL", required=True, help="Prometheus base URL.")
@click.option("--daemon", default="http://127.0.0.1:8000", show_default=True, help="Inference daemon base URL.")
@click.option("--query", "queries", multiple=True, metavar="METRIC=PROMQL", help="A metric's query (repeatable).")
@click.option(
    "--instance-label",
    default="instance",
    show_default=True,
    help="Label naming the server; the default queries aggregate by it.",
)
@click.option("--profile", type=click.Choice(c.PROFILES), help="Profile of every server (default: from its name).")
@click.option("--interval", type=click.FloatRange(min=0), default=60.0, show_default=True, help="Seconds per cycle.")
@click.option(
    "--backfill", type=click.IntRange(min=5), default=60, show_default=True, help="Minutes read again each cycle."
)
@click.option(
    "--lag", type=click.FloatRange(min=0), default=60.0, show_default=True, help="Seconds after a step ends to read it."
)
@click.option("--clip/--no-clip", default=True, show_default=True, help="Clip values outside the contract range.")
@click.option("--api-key-env", metavar="VAR", help="Environment variable holding the daemon's X-API-Key.")
@click.option("--batch", type=click.IntRange(min=1), default=5000, show_default=True, help="Most records per POST.")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds per HTTP call."
)
@click.option("--cycles", type=click.IntRange(min=1), help="Stop after this many cycles (default: run until stopped).")
@click.option("--log-level", type=_LOG_LEVELS, default="info", show_default=True)
def forward(
    prometheus_url: str,
    daemon: str,
    queries: tuple[str, ...],
    instance_label: str,
    profile: str | None,
    interval: float,
    backfill: int,
    lag: float,
    clip: bool,
    api_key_env: str | None,
    batch: int,
    timeout: float,
    cycles: int | None,
    log_level: str,
) -> None:
    """Forward metrics from Prometheus to the inference daemon (help text: :func:`_help`)."""
    from workbench.service.settings import api_key_from_env

    try:
        chosen = parse_query_options(queries, instance_label)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--query") from exc
    key = api_key_from_env(api_key_env)
    logging.getLogger("workbench").setLevel(log_level.upper())
    headers = {"X-API-Key": key} if key else {}
    with (
        httpx.Client(timeout=timeout) as prom,
        httpx.Client(base_url=daemon, headers=headers, timeout=timeout) as feed_client,
        _stop_on_sigterm(),
    ):
        forwarder = PrometheusForwarder(
            prom,
            FeedClient(feed_client, batch=batch),
            base_url=prometheus_url,
            queries=chosen,
            label=instance_label,
            profile=profile,
            backfill_steps=backfill * 60 // c.STEP_SECONDS,
            lag=lag,
            clip=clip,
        )
        log.info("forwarding %s from %s to %s%s", ", ".join(chosen), prometheus_url, daemon, FEED_PATH)
        try:
            forwarder.run(interval, cycles)
        except KeyboardInterrupt:
            log.info("stopped")


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the loop runs (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
