"""The fleet dashboard: composes the panels, polls the daemons and keeps a clear status banner.

:meth:`FleetDashboard.refresh` polls once (``fetch`` then ``apply``). :meth:`FleetDashboard.start`
runs that on the kernel's own event loop, with the HTTP calls in a worker thread and every
widget update back on the loop, so the kernel stays responsive and widgets are only touched
from one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

import ipywidgets as w
import traitlets as t

from workbench import contract as c
from workbench.dashboard import defaults as d
from workbench.dashboard import hindsight
from workbench.dashboard.alerts import AlertsTable
from workbench.dashboard.client import DaemonApi
from workbench.dashboard.documents import SOURCE_TFT, clock, forecast_start, server_rows
from workbench.dashboard.environment import EnvironmentPanel
from workbench.dashboard.fleet import FleetOverview
from workbench.dashboard.scenario import ScenarioButtons
from workbench.dashboard.server import ServerView
from workbench.errors import ConfigError, DaemonError, DaemonUnreachable
from workbench.thresholds import Thresholds

STATES = ("connecting", "live", "warming_up", "unreachable", "error")
log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """What one poll of the daemons returned (built off the kernel's loop, applied on it).

    Attributes:
        predictions: ``GET /predictions/current?view=summary``, the fleet's figures (``None``
            when the daemon failed).
        status: ``GET /status`` (``None`` when it failed).
        scenario: The generator's ``GET /scenario/status`` (``None`` when it failed).
        server: The server whose history was read.
        selected: Its full forecast, ``GET /predictions/current?server=`` (empty when none or failed).
        history: Its ``GET /history/{server}`` (empty when none or failed).
        past: Its forecast from the hours the fan chart compares with (:meth:`FleetDashboard.read_past`).
        daemon_error: Why the inference daemon failed ("" when it answered).
        unreachable: Whether it failed by not answering at all.
        generator_error: Why the generator failed ("" when it answered).
        at: When the poll ended (UTC).
    """

    predictions: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    scenario: dict[str, Any] | None = None
    server: str | None = None
    selected: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    past: dict[str, Any] = field(default_factory=dict)
    daemon_error: str = ""
    unreachable: bool = False
    generator_error: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class FleetDashboard(w.VBox):
    """The live fleet view: status banner, environment, scenarios, fleet tiles, fan chart, alerts.

    Args:
        client: Talks to the daemons (:class:`workbench.dashboard.DaemonClient` or a fake).
        thresholds: Alert levels drawn on the fan chart (default: the built-in table).
        history_steps: Steps of history drawn behind the forecast.

    Attributes:
        state: One of :data:`STATES`; the banner says it in words.
        message: The banner's text.
        refreshes: Polls applied so far.
        interval: Seconds between polls while running.
    """

    state = t.Enum(STATES, default_value="connecting")
    message = t.Unicode("connecting to the daemon …")
    refreshes = t.Int(0)

    def __init__(
        self,
        client: DaemonApi,
        thresholds: Thresholds | None = None,
        history_steps: int = d.HISTORY_STEPS,
        **kwargs: Any,
    ) -> None:
        self.client = client
        self.history_steps = history_steps
        self.interval = d.REFRESH_SECONDS
        self.banner = w.HTML()
        self.banner.add_class("wb-status")
        self.fleet = FleetOverview()
        self.alerts = AlertsTable()
        self.server_view = ServerView(thresholds)
        self.environment = EnvironmentPanel()
        self.scenario = ScenarioButtons(client)
        self._latest: dict[str, Any] = {}
        self._thresholds_seen: dict[str, Any] | None = None
        self._history: dict[str, Any] = {}
        self._selected: dict[str, Any] = {}  # the selected server's ?server= document: the fan chart's numbers
        self._past: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_ok: datetime | None = None
        top = w.HBox([self.environment, self.scenario], layout=w.Layout(flex_flow="row wrap", gap="24px"))
        parts = [w.HTML(d.CSS), self.banner, top, self.fleet, self.server_view, self.alerts]
        super().__init__(parts, **kwargs)
        self.add_class("wb-dashboard")
        self.observe(self._on_change, ["state", "message"])
        self.fleet.observe(self._on_select, "selected_server")
        self.server_view.observe(self._on_compare, "compare_hours")
        self._on_change()

    # ------------------------------------------------------------------ polling

    def refresh(self) -> None:
        """Poll the daemons once and update every panel (blocking; :meth:`start` runs it in the background)."""
        self.apply(self.fetch())

    def fetch(self) -> Snapshot:
        """Read the daemons' documents; touches no widget (safe in a worker thread)."""
        snap = Snapshot()
        try:
            snap.predictions = self.client.summary()
            snap.status = self.client.status()
            snap.server = self.fleet.selected_server or _riskiest(snap.predictions)
            if snap.server is not None and snap.server in server_rows(snap.predictions):
                snap.selected = self._read_forecast(snap.server)
                snap.history = self._read_history(snap.server)
                snap.past = self.read_past(snap.server, snap.history, snap.predictions)
        except DaemonError as exc:
            snap.predictions = snap.status = None
            snap.daemon_error, snap.unreachable = str(exc), isinstance(exc, DaemonUnreachable)
        try:
            snap.scenario = self.client.scenario_status()
        except DaemonError as exc:
            snap.generator_error = f"generator: {exc}"
        snap.at = datetime.now(UTC)
        return snap

    def apply(self, snap: Snapshot) -> None:
        """Show a :class:`Snapshot`: update the panels, or grey them out and say why."""
        if snap.scenario is not None:
            self.scenario.active = str(snap.scenario.get("scenario") or "") or None
        if snap.generator_error or snap.scenario is not None:
            self.scenario.error = snap.generator_error
        if snap.predictions is None:
            self._show_failure(snap)
        else:
            self._show(snap)
        self.refreshes += 1

    def _use_thresholds(self, table: Any) -> None:
        """Draw the levels the daemon alerts on (its metadata's ``thresholds``), when it sends them."""
        if not isinstance(table, dict) or table == self._thresholds_seen:
            return
        try:
            self.server_view.thresholds = Thresholds.from_dict(table)
        except ConfigError as exc:
            log.warning("daemon thresholds ignored: %s", exc)
            return
        self._thresholds_seen = table

    def _show(self, snap: Snapshot) -> None:
        doc = snap.predictions or {}
        self._latest, self._history, self._past = doc, snap.history, snap.past
        self._selected = snap.selected
        self.remove_class("wb-stale")
        self.fleet.servers = server_rows(doc)
        self.alerts.alerts = list(doc.get("alerts") or [])
        self.environment.environment = dict(doc.get("environment") or {})
        self._use_thresholds((doc.get("metadata") or {}).get("thresholds"))
        self.environment.warmup = dict((snap.status or {}).get("warmup") or {})
        self.environment.fit = dict((doc.get("metadata") or {}).get("model_fit") or {})
        if snap.server is not None and self.fleet.selected_server != snap.server:
            self.fleet.selected_server = snap.server  # its observer sees the history already read
        self._update_server_view()
        self._last_ok = snap.at
        self.state, self.message = _banner(doc, snap.status)

    def _show_failure(self, snap: Snapshot) -> None:
        self.add_class("wb-stale")
        seen = self._last_ok
        last = f"showing the last data, from {seen:%H:%M:%S} UTC" if seen else "no data yet"
        retry = f"retrying every {self.interval:g} s" if self.running else "retrying on the next refresh"
        if snap.unreachable:
            self.state = "unreachable"
            self.message = f"daemon unreachable at {self.client.daemon_url} · {last} · {retry}"
        else:
            self.state = "error"
            self.message = f"daemon error: {snap.daemon_error} · {last} · {retry}"

    def _read_forecast(self, server: str) -> dict[str, Any]:
        """Read one server's full forecast (``?server=``): the fleet view holds only the summary."""
        try:
            return self.client.predictions(servers=[server])
        except DaemonError as exc:  # drawn without a fan; the next refresh tries again
            log.info("no forecast for %s: %s", server, exc)
            return {}

    def _read_history(self, server: str) -> dict[str, Any]:
        try:
            return self.client.history(server, self.history_steps)
        except DaemonError as exc:  # e.g. 404 when the server just left: draw no history
            log.info("no history for %s: %s", server, exc)
            return {}

    def _on_select(self, change: dict[str, Any]) -> None:
        server = change["new"]
        if server is None or self._history.get("server") == server:
            return
        known = server in self.fleet.servers
        self._selected = self._read_forecast(server) if known else {}
        self._history = self._read_history(server) if known else {}
        self._past = self.read_past(server, self._history, self._latest)
        self._update_server_view()

    def read_past(self, server: str, history: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        """Read the forecast ``server`` was given ``compare_hours`` before its newest step (``{}``: overlay off).

        Returns:
            :func:`~workbench.dashboard.hindsight.past_forecast` with ``server``, or ``{"server",
            "error"}`` when the daemon keeps no history or the read failed.
        """
        hours = self.server_view.compare_hours
        start = forecast_start(history, (doc.get("metadata") or {}).get("data_time"))
        if not hours or start is None:
            return {}
        at = start - timedelta(seconds=c.STEP_SECONDS) - timedelta(hours=hours)
        try:
            answer = self.client.archived(hindsight.query(server, at))
        except DaemonError as exc:  # 404: the daemon keeps no history
            log.info("no archived forecast for %s: %s", server, exc)
            reason = "the daemon keeps no history" if exc.status == 404 else f"not read ({exc.status or 'no answer'})"
            return {"server": server, "error": reason}
        return {"server": server, **hindsight.past_forecast(list(answer.get("rows") or []), at)}

    def _on_compare(self, _change: dict[str, Any]) -> None:
        server = self.fleet.selected_server
        self._past = self.read_past(server, self._history, self._latest) if server is not None else {}
        self._update_server_view()

    def _update_server_view(self) -> None:
        server = self.fleet.selected_server
        if server is None or server not in self.fleet.servers:
            self.server_view.data = {}
            return
        forecasts = self._selected.get("predictions") or {}
        row = self.fleet.servers.get(server, {})
        history = self._history if self._history.get("server") == server else {}
        self.server_view.data = {
            "server": server,
            "profile": row.get("profile"),
            "forecast": forecasts.get(server) or {},
            "history": history,
            "data_time": (self._selected.get("metadata") or self._latest.get("metadata") or {}).get("data_time"),
            "past": self._past if self._past.get("server") == server else {},
        }

    # ------------------------------------------------------------------ live loop

    @property
    def running(self) -> bool:
        """Whether the refresh loop is running."""
        return self._task is not None and not self._task.done()

    def start(self, interval: float | None = None) -> None:
        """Refresh every ``interval`` seconds on the running event loop (a Jupyter kernel, Voilà).

        Raises:
            ConfigError: when ``interval`` is not positive.
            RuntimeError: when no event loop is running (call :meth:`refresh` yourself then).
        """
        interval = d.REFRESH_SECONDS if interval is None else float(interval)
        if not interval > 0:
            raise ConfigError(f"interval must be a positive number of seconds, got {interval}")
        loop = asyncio.get_running_loop()
        self.stop()
        self.interval = interval
        self._task = loop.create_task(self._run(), name="workbench-dashboard-refresh")

    def stop(self) -> None:
        """Stop the refresh loop (the panels keep their last data)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                snap = await asyncio.to_thread(self.fetch)
                self.apply(snap)
            except Exception as exc:  # keep polling whatever one refresh hit; say it on the banner
                log.exception("dashboard refresh failed")
                with contextlib.suppress(Exception):
                    self.state, self.message = "error", f"refresh failed: {type(exc).__name__}: {exc}"
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        """Stop the loop and close the widgets."""
        self.stop()
        super().close()

    def _on_change(self, _change: dict[str, Any] | None = None) -> None:
        colour = {"live": d.GREEN, "warming_up": d.AMBER, "connecting": d.GREY}.get(self.state, d.RED)
        self.banner.value = (
            f'<div style="background:{colour};color:white;padding:6px 12px;border-radius:4px">'
            f"{escape(self.message)}</div>"
        )


def _riskiest(doc: dict[str, Any]) -> str | None:
    """Return the forecast server with the highest risk score (the default drill-down)."""
    rows = [(r["risk_score"], s) for s, r in server_rows(doc).items() if r["source"] == SOURCE_TFT]
    scored = [(score, s) for score, s in rows if score is not None]
    return max(scored, key=lambda x: (x[0], x[1]))[1] if scored else None


def _banner(doc: dict[str, Any], status: dict[str, Any] | None) -> tuple[str, str]:
    """Return the state and text of the banner for a predictions document (and ``/status``)."""
    meta = doc.get("metadata") or {}
    rows = server_rows(doc)
    ready = sum(1 for r in rows.values() if r["source"] == SOURCE_TFT)
    warming = len(rows) - ready
    warmup = (status or {}).get("warmup") or {}
    if meta.get("status") != "ok" or not ready:
        total = warmup.get("total_servers", len(rows))
        ready_now = warmup.get("ready_servers", ready)
        if not total:
            return "warming_up", "warming up 0/0 servers · no data received yet: is the generator streaming?"
        needed = warmup.get("threshold") or next((r["needed_steps"] for r in rows.values() if r["needed_steps"]), "?")
        return "warming_up", f"warming up {ready_now}/{total} servers ready · each needs {needed} steps of history"
    more = f" · {warming} warming up" if warming else ""
    return "live", (
        f"live · prediction time {clock(meta.get('prediction_time'))} · data up to {clock(meta.get('data_time'))}"
        f" · {ready} server{'' if ready == 1 else 's'} forecast{more}"
    )
