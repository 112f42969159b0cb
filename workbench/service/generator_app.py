"""The generator daemon: streams the simulated fleet to the inference daemon, with scenario control.

A background thread takes one step of the whole fleet from a
:class:`~workbench.simulator.FleetStream` every ``tick`` seconds and POSTs it to the target's
``/feed/data``. A step is retried with exponential backoff until the target accepts it
(connection errors, 408, 429 and 5xx), so nothing is skipped while the target restarts; a step
the target refuses as invalid (another 4xx) is logged and not retried. ``POST /scenario/set``
switches the scenario from the next step on.

With ``history`` steps set, the first ``history`` steps of the stream are sent at once, in
batches of at most ``history_batch_records`` records, before the paced streaming starts: the
target's windows fill in seconds instead of after ``history`` ticks (the live demo's warm-up).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import polars as pl
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.service import schemas as s
from workbench.service.common import API_KEY_HEADER, BodyError, BodyTooLarge, api_key_guard, read_body
from workbench.service.settings import GeneratorSettings
from workbench.simulator import SCENARIO_NAMES, FleetStream

MAX_SCENARIO_BODY = 4096
SERVICE_NAME = "workbench-generator"
RETRY_STATUSES = frozenset({408, 425, 429})
log = logging.getLogger(__name__)


def encode_step(frame: pl.DataFrame) -> bytes:
    """Return the ``/feed/data`` body of one contract frame (timestamps as ISO 8601 UTC)."""
    rows = frame.with_columns(pl.col(c.TIMESTAMP).dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_json()
    return b'{"records":' + rows.encode() + b"}"


class Generator:
    """The streaming loop and its figures; :meth:`run` is meant for a background thread.

    Args:
        settings: Validated generator settings.
        transport: httpx transport (injectable for tests; default: real HTTP).
    """

    def __init__(self, settings: GeneratorSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.stream = FleetStream(settings.servers, settings.seed, scenario=settings.scenario)
        self.lock = threading.Lock()  # the stream is advanced by the loop and switched by requests
        self.transport = transport
        self.started = time.time()
        self.steps_sent = 0
        self.records_sent = 0
        self.steps_refused = 0
        self.retries = 0
        self.history_sent = 0
        self.last_error: str | None = None
        self.last_response: dict[str, Any] | None = None
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def streaming(self) -> bool:
        """Whether the streaming thread is running."""
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        """Run :meth:`run` in a daemon thread."""
        self.thread = threading.Thread(target=self.run, name="generator", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Ask :meth:`run` to return (it finishes the POST in flight)."""
        self._stop.set()

    def run(self) -> None:
        """Send one step per tick until stopped or ``settings.steps`` steps are sent."""
        headers = {"content-type": "application/json"}
        if self.settings.api_key:
            headers[API_KEY_HEADER] = self.settings.api_key
        with httpx.Client(timeout=self.settings.timeout, headers=headers, transport=self.transport) as client:
            self._send_history(client)
            due = time.monotonic()
            while not self._stop.is_set() and not self._done():
                with self.lock:
                    frame = next(self.stream)
                self._deliver(client, encode_step(frame), frame.height)
                due += self.settings.tick
                self._stop.wait(max(0.0, due - time.monotonic()))

    def _send_history(self, client: httpx.Client) -> None:
        """Send the first ``settings.history`` steps at once, several steps per POST, oldest first."""
        per_post = max(1, self.settings.history_batch_records // self.settings.servers)
        left = self.settings.history
        while left > 0 and not self._stop.is_set():
            count = min(per_post, left)
            with self.lock:
                frame = pl.concat([next(self.stream) for _ in range(count)])
            if self._deliver(client, encode_step(frame), frame.height, steps=count):
                self.history_sent += count
            left -= count
        if self.settings.history:
            log.info("history sent: %d of %d steps", self.history_sent, self.settings.history)

    def _done(self) -> bool:
        steps = self.settings.steps  # live steps, after the history
        return steps is not None and self.stream.steps >= self.settings.history + steps

    def _deliver(self, client: httpx.Client, body: bytes, records: int, *, steps: int = 1) -> bool:
        """POST ``steps`` steps, retrying with exponential backoff until accepted, refused or stopped.

        Returns:
            Whether the target accepted them.
        """
        delay = min(0.25, self.settings.max_backoff)
        while not self._stop.is_set():
            try:
                response = client.post(self.settings.feed_url, content=body)
            except httpx.TransportError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    self.steps_sent += steps
                    self.records_sent += records
                    self.last_response = _json_or_text(response)
                    self.last_error = None
                    return True
                self.last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500 and response.status_code not in RETRY_STATUSES:
                    self.steps_refused += steps
                    log.error("step refused by %s, not retried: %s", self.settings.feed_url, self.last_error)
                    return False
            self.retries += 1
            log.warning("step not delivered (%s); retrying in %.2f s", self.last_error, delay)
            self._stop.wait(delay)
            delay = min(2 * delay, self.settings.max_backoff)
        return False

    def set_scenario(self, name: str) -> dict[str, Any]:
        """Switch the scenario from the next step on and return the ``POST /scenario/set`` answer.

        Raises:
            ConfigError: naming the allowed scenarios when ``name`` is unknown.
        """
        with self.lock:
            old = self.stream.scenario_status()["scenario"]
            new = self.stream.set_scenario(name)
            affected = len(self.stream.scenario_status()["affected_servers"])
        return {
            "status": "success",
            "old_scenario": old,
            "new_scenario": new.name,
            "affected_servers": affected,
            "message": f"Scenario changed to {new.name}. {affected} servers affected.",
        }

    def status(self) -> dict[str, Any]:
        """Return the ``GET /scenario/status`` document."""
        with self.lock:
            doc = self.stream.scenario_status()
            running = self.stream.incidents_in_progress()
            recent = self.stream.recent_incidents()
        return {
            **doc,
            "multiplier": doc["rate_multiplier"],
            "uptime_seconds": round(time.time() - self.started, 1),
            "steps_sent": self.steps_sent,
            "records_sent": self.records_sent,
            "steps_refused": self.steps_refused,
            "retries": self.retries,
            "history_steps": self.settings.history,
            "history_sent": self.history_sent,
            "last_error": self.last_error,
            "target": self.settings.feed_url,
            "tick_seconds": self.settings.tick,
            "servers": self.settings.servers,
            "streaming": self.streaming,
            "incidents_in_progress": running,
            "recent_incidents": recent,
        }


def _json_or_text(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"text": response.text[:300]}
    return data if isinstance(data, dict) else {"json": data}


def scenario_from_body(body: bytes) -> str:
    """The scenario name of a ``/scenario/set`` body.

    Raises:
        BodyError: 400 for anything but a strict JSON object, 422 for a missing or non-text
            ``scenario`` or an unknown name (shown cut to 60 characters).
    """
    try:
        doc = orjson.loads(body)  # strict: NaN, Infinity and bad UTF-8 are refused
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, f"malformed JSON body: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise BodyError(400, 'the body must be a JSON object {"scenario": NAME}')
    name = doc.get("scenario")
    if not isinstance(name, str):
        raise BodyError(422, "scenario: required, a text naming one of the allowed scenarios")
    if name not in SCENARIO_NAMES:
        shown = name if len(name) <= 60 else name[:60] + "..."
        raise BodyError(422, f"scenario: unknown {shown!r}; allowed: {', '.join(SCENARIO_NAMES)}")
    return name


def create_generator_app(settings: GeneratorSettings, *, transport: httpx.BaseTransport | None = None) -> FastAPI:
    """Build the generator daemon's app; the streaming thread runs while the app serves.

    Args:
        settings: Validated settings.
        transport: httpx transport for the POSTs (injectable for tests).
    """
    generator = Generator(settings, transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        generator.start()
        try:
            yield
        finally:
            generator.stop()
            if generator.thread is not None:
                await anyio.to_thread.run_sync(generator.thread.join, settings.timeout + 1)

    app = FastAPI(
        title="workbench generator daemon",
        version="1.0",
        summary="Streams a simulated fleet to the inference daemon, one 5-minute step per tick.",
        lifespan=lifespan,
    )
    app.state.generator = generator
    guard = api_key_guard(settings.api_key)

    @app.post(
        "/scenario/set",
        response_model=s.ScenarioSetResponse,
        responses={
            400: {"model": s.ErrorResponse, "description": "not a JSON object"},
            413: {"model": s.ErrorResponse, "description": f"body over {MAX_SCENARIO_BODY} bytes"},
            422: {"model": s.ErrorResponse, "description": "unknown scenario (the allowed ones are named)"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": s.ScenarioRequest.model_json_schema()}}}},
        dependencies=[Depends(guard)],
    )  # fmt: skip
    async def scenario_set(request: Request) -> Any:
        """Switch the scenario (``healthy``, ``degrading``, ``critical``) from the next step on.

        The body is ``{"scenario": NAME}``; it is read strictly (no NaN, at most a few KB) and a
        refused value is never echoed whole.
        """
        try:
            name = scenario_from_body(await read_body(request, MAX_SCENARIO_BODY))
            return await anyio.to_thread.run_sync(generator.set_scenario, name)
        except BodyTooLarge as exc:
            return JSONResponse({"detail": str(exc)}, status_code=413)
        except BodyError as exc:
            return JSONResponse({"detail": str(exc), "allowed": list(SCENARIO_NAMES)}, status_code=exc.status)
        except ConfigError as exc:
            return JSONResponse({"detail": str(exc), "allowed": list(SCENARIO_NAMES)}, status_code=422)

    @app.get("/scenario/status", response_model=s.ScenarioStatusResponse)
    async def scenario_status() -> Any:
        """Return the scenario in force, the affected servers and the streaming figures."""
        return await anyio.to_thread.run_sync(generator.status)

    @app.get("/health", response_model=s.HealthResponse)
    async def health() -> dict[str, Any]:
        """Say whether the generator is up."""
        return {"status": "healthy", "service": SERVICE_NAME, "running": True, "streaming": generator.streaming}

    return app
