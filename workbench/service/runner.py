"""Run an app with uvicorn: loopback by default, graceful shutdown on SIGINT and SIGTERM.

On either signal uvicorn stops accepting connections, lets requests in flight finish (up to
:data:`GRACE_SECONDS`) and then runs the app's lifespan shutdown, where the inference daemon
takes its final snapshot.
"""

from __future__ import annotations

import logging

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
    uvicorn.Server(config).run()
