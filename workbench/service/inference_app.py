"""The inference daemon's HTTP and WebSocket API (DESIGN §7), on FastAPI.

Writes (``POST /feed/data``) are validated record by record, logged and acknowledged without
waiting for the model; reads return the latest published prediction at once. Every endpoint
is described in ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from workbench import contract as c
from workbench.drift import RULE as DRIFT_RULE
from workbench.errors import StateError
from workbench.manifest import read_info
from workbench.service import schemas as s
from workbench.service.common import API_KEY_HEADER, BodyTooLarge, api_key_guard, key_matches, read_body
from workbench.service.compression import GZipWhenAccepted
from workbench.service.daemon import SERVICE_NAME, InferenceDaemon
from workbench.service.history_api import add_history_route
from workbench.service.ingest import BodyError, parse_body
from workbench.service.predictions_api import add_predictions_route
from workbench.service.predictor import Published
from workbench.service.reload import ReloadRefused
from workbench.service.settings import InferenceSettings
from workbench.thresholds import Thresholds

if TYPE_CHECKING:
    from workbench.model.bundle import Bundle

JSON = "application/json"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorResponse, "description": text}
    for code, text in [
        (400, "malformed JSON"),
        (401, "missing or invalid X-API-Key (only when the daemon has a key)"),
        (413, "body or record count over the limit"),
        (503, "the append log cannot be written; nothing was stored"),
    ]
}


WS_DOC = {
    "summary": "WebSocket: a push on each new prediction",
    "description": (
        "Upgrade to a WebSocket. The server sends each new prediction as one text message holding "
        "the `GET /predictions/current` document (with `?summary=true`: without `predictions`); the "
        "latest one is sent on connect. A slow client skips to the newest. Messages from the client "
        "are ignored."
    ),
    "parameters": [{"name": "summary", "in": "query", "required": False, "schema": {"type": "boolean"}}],
    "responses": {
        "101": {
            "description": "switching protocols; then one message per prediction",
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/PredictionsResponse"}}},
        }
    },
    "tags": ["read"],
}


def _openapi_with_websocket(app: FastAPI) -> None:
    """Describe ``/ws/predictions`` in ``/openapi.json`` (OpenAPI has no WebSocket operations)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema["paths"]["/ws/predictions"] = {"get": WS_DOC}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: InferenceSettings, *, bundle: Bundle | None = None) -> FastAPI:
    """Build the inference daemon's app: load the model, recover the state folder, wire the routes.

    Args:
        settings: Validated settings.
        bundle: An already loaded bundle (default: read ``settings.bundle``'s manifest here; the
            network is loaded by the forecast worker, or in this process with a thread worker).

    Raises:
        BundleError: when the bundle cannot be loaded.
        StateError: when the state folder cannot be used (see :class:`InferenceDaemon`).
    """
    info = bundle if bundle is not None else read_info(settings.bundle)  # torch-free: the worker loads the network
    thresholds = Thresholds.from_yaml(settings.thresholds) if settings.thresholds else Thresholds()
    daemon = InferenceDaemon(settings, info, thresholds)
    app = FastAPI(
        title="workbench inference daemon",
        version="1.0",
        summary="Feeds fleet metrics to a TFT and serves 8-hour forecasts, alerts and fleet risk.",
        lifespan=daemon.lifespan,
    )
    app.state.daemon = daemon
    app.add_middleware(GZipWhenAccepted)  # JSON answers over 1 KB; never one already compressed, never a WebSocket
    _feed_routes(app, daemon)
    _admin_routes(app, daemon)
    _drift_route(app, daemon)
    _read_routes(app, daemon)
    add_history_route(app, daemon.archive)  # GET /history: the archive (GET /history/{server}: the live windows)
    _websocket_route(app, daemon)
    _openapi_with_websocket(app)
    return app


def _feed_routes(app: FastAPI, daemon: InferenceDaemon) -> None:
    settings, ingestor = daemon.settings, daemon.ingestor
    guard = api_key_guard(settings.api_key, ingestor.refuse)

    @app.post(
        "/feed/data",
        response_model=s.FeedResponse,
        responses={422: {"model": s.FeedResponse, "description": "some or all records refused"}, **_ERRORS},
        openapi_extra={"requestBody": s.feed_request_body(settings.max_records)},
        dependencies=[Depends(guard)],
        tags=["feed"],
    )
    async def feed_data(request: Request) -> Response:
        """Add metric records to the windows.

        Each record is checked on its own: valid ones are logged durably and added, invalid
        ones are listed in ``rejected`` with index, field and reason (status 422 when any is
        refused). Aliases of the earlier system (``cpu_percent``, ``status``, ...) are
        accepted; unknown fields are ignored and listed.
        """
        try:
            records = parse_body(await read_body(request, settings.max_body_bytes), settings.max_records)
            outcome = await anyio.to_thread.run_sync(ingestor.feed, records)
        except BodyTooLarge as exc:
            ingestor.refuse(413)
            return _error(413, str(exc))
        except BodyError as exc:
            ingestor.refuse(exc.status)
            return _error(exc.status, str(exc), [i.to_dict() for i in exc.issues])
        except StateError as exc:
            return _error(503, f"nothing stored: {exc}")
        return JSONResponse(outcome.body, status_code=outcome.status)


def _drift_route(app: FastAPI, daemon: InferenceDaemon) -> None:
    @app.get("/drift/status", response_model=s.DriftResponse, tags=["read"])
    async def drift_status() -> Response:
        """Say whether the model still fits the fleet: its state, the rule, and the figures behind it.

        The forecasts are scored as their actuals arrive (pinball loss against a climatological
        band's, p10-p90 coverage, per metric and horizon band, fleet-wide and for the worst
        servers) and each server's last two hours are checked against the bundle's training
        inputs for its profile. ``state`` is ``warming_up``, ``fits``, ``inputs_shifted`` or
        ``no_longer_fits``; ``rule`` says when each applies, ``reasons`` why it applies now.
        The figures restart when a reload swaps the model.
        """
        drift = daemon.predictor.latest.drift
        if drift is None:
            drift = {"state": "warming_up", "reasons": ["no forecast yet"], "rule": DRIFT_RULE}
        return JSONResponse(drift)


def _admin_routes(app: FastAPI, daemon: InferenceDaemon) -> None:
    guard = api_key_guard(daemon.settings.api_key)

    @app.post(
        "/admin/reload",
        response_model=s.ReloadResponse,
        responses={
            401: _ERRORS[401],
            409: {"model": s.ReloadRefusedResponse, "description": "another reload runs, or the bundle does not fit"},
            422: {"model": s.ReloadRefusedResponse, "description": "not a usable bundle, or it failed to load"},
        },
        dependencies=[Depends(guard)],
        tags=["admin"],
    )
    async def admin_reload(body: s.ReloadRequest) -> JSONResponse:
        """Serve another bundle from the next forecast on, without a restart.

        The new model is loaded while the old one keeps serving and swapped in between two
        forecasts, with the active alerts carried over; feeding goes on throughout and no window
        is reset. A bundle whose targets, encoder lengths or horizon differ from the running
        windows is refused with the differences, and the old model keeps serving. Answers when
        the new model serves (seconds: the network is loaded first).
        """
        try:
            doc = await anyio.to_thread.run_sync(daemon.reload, Path(body.bundle))
        except ReloadRefused as refused:
            return JSONResponse({"detail": refused.detail, "differences": refused.differences}, refused.status)
        return JSONResponse(doc)


def _error(status: int, detail: str, rejected: list[dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "rejected": rejected or []}, status_code=status)


def _read_routes(app: FastAPI, daemon: InferenceDaemon) -> None:
    predictor = daemon.predictor
    add_predictions_route(app, daemon)  # GET /predictions/current: filters, summary view, gzip

    @app.get("/alerts/active", response_model=s.AlertsResponse, tags=["read"])
    async def alerts_active() -> Response:
        """Return the active predictive alerts of the latest forecast, most urgent first."""
        return Response(predictor.latest.alerts_body, media_type=JSON)

    @app.get(
        "/history/{server}",
        response_model=s.HistoryResponse,
        responses={404: {"model": s.ErrorResponse, "description": "the daemon holds no such server"}},
        tags=["read"],
    )
    async def history(
        server: str,
        steps: Annotated[int, Query(ge=1, le=c.MAX_ENCODER_STEPS, description="steps of history")] = c.HORIZON_STEPS,
    ) -> Response:
        """Return the last ``steps`` steps of one server's metrics, as the model reads them.

        Fewer steps come back when the server has less history; ``forecast_start`` is where its
        next forecast begins.
        """
        doc = await anyio.to_thread.run_sync(daemon.history, server, steps)
        if doc is None:
            return _error(404, f"unknown server {server!r}: the daemon holds no data for it")
        return JSONResponse(doc)

    @app.get(
        "/health",
        response_model=s.HealthResponse,
        responses={503: {"model": s.HealthResponse, "description": "unhealthy: `problems` says why"}},
        tags=["read"],
    )
    async def health() -> JSONResponse:
        """Say whether the daemon works: predictor running, state folder writable, worker answering.

        503 with the ``problems`` listed when it does not, so a load balancer or an orchestrator
        that only reads the status code sees it too.
        """
        problems = daemon.problems()
        doc = {
            "status": "unhealthy" if problems else "healthy",
            "service": SERVICE_NAME,
            "running": daemon.running,
            "problems": problems,
        }
        return JSONResponse(doc, status_code=503 if problems else 200)

    @app.get("/status", response_model=s.StatusResponse, tags=["read"])
    async def status(request: Request) -> Response:
        """Return warm-up progress per server and for the fleet, counters and state-folder figures.

        The state folder's path and the worker's process id are shown only to a reader with the
        ``X-API-Key`` (to every reader when the daemon has no key).
        """
        private = key_matches(daemon.settings.api_key, request.headers.get(API_KEY_HEADER))
        doc = await anyio.to_thread.run_sync(daemon.status, private)
        return JSONResponse(doc)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
        tags=["read"],
    )
    async def metrics() -> Response:
        """Prometheus exposition: forecasts, alerts, fleet risk, warm-up and ingest counters."""
        live = await anyio.to_thread.run_sync(generate_latest, daemon.registry)
        return Response(daemon.predictor.latest.metrics + live, media_type=CONTENT_TYPE_LATEST)


def _websocket_route(app: FastAPI, daemon: InferenceDaemon) -> None:
    @app.websocket("/ws/predictions")
    async def ws_predictions(websocket: WebSocket, summary: bool = False) -> None:
        """Push each new prediction; see :data:`WS_DOC`."""
        await websocket.accept()
        queue = daemon.hub.subscribe()
        receiver = asyncio.create_task(_until_disconnect(websocket))
        try:
            latest: Published | None = daemon.predictor.latest
            while latest is not None:
                if latest.version:
                    await websocket.send_text(latest.summary_text if summary else latest.text)
                getter = asyncio.create_task(queue.get())
                await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                latest = getter.result()
        except WebSocketDisconnect:
            pass
        finally:
            daemon.hub.unsubscribe(queue)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver


async def _until_disconnect(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass
