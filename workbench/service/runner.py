"""Run an app with uvicorn: loopback by default, graceful shutdown on SIGINT and SIGTERM.

On either signal uvicorn stops accepting connections, lets requests in flight finish (up to
:data:`GRACE_SECONDS`) and then runs the app's lifespan shutdown, where the inference daemon
takes its final snapshot. A stop asked for by a signal is a clean exit (status 0).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

GRACE_SECONDS = 10


def run_app(app: FastAPI, *, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` until SIGINT or SIGTERM.

    Args:
        app: The FastAPI app (its lifespan runs the background work).
        host: Address to bind.
        port: TCP port.
        log_level: One of ``critical``, ``error``, ``warning``, ``info``, ``debug``.
    """
    logging.getLogger("workbench").setLevel(log_level.upper())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_SECONDS,
        ws_max_size=1 << 20,
    )
    _Server(config).run()


class _Server(uvicorn.Server):
    """A uvicorn server that does not re-raise the signal it stopped on.

    uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown so that the default handler
    ends the process; that turns a requested, clean stop into ``KeyboardInterrupt`` (status 1)
    or death by signal. Here the shutdown has already happened, so ``run`` simply returns.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install uvicorn's handlers; forget the signals caught once the server has stopped."""
        with super().capture_signals():
            try:
                yield
            finally:
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()
