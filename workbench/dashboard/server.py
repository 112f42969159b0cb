"""The server view: one metric's history and its p10-p90 fan, with thresholds and "now" marked."""

from __future__ import annotations

from datetime import timedelta
from html import escape
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go
import traitlets as t

from workbench import contract as c
from workbench.dashboard import defaults as d
from workbench.dashboard.documents import (
    SOURCE_TFT,
    SOURCE_WARMING_UP,
    forecast_start,
    forecast_times,
    parse_time,
    plot_time,
)
from workbench.dashboard.figures import redraw_on_first_view
from workbench.dashboard.hindsight import COMPARE_HOURS, error_bars
from workbench.thresholds import Thresholds

TRACES = ("p10", "p90", "p50", "history", "warning", "critical", "then")  # then: a past forecast (hindsight)


class ServerView(w.VBox):
    """A fan chart of one server: history line, p10-p90 band, p50, threshold lines, a "now" marker.

    The figure holds the same six traces (:data:`TRACES`) for its whole life; every redraw
    replaces their data inside one ``batch_update``, so the chart neither flickers nor grows.
    A server without a TFT forecast (warming up, missing metrics) shows its history and no fan.

    Args:
        thresholds: Alert levels drawn as lines (default: the built-in table).

    Attributes:
        data: ``{"server", "profile", "forecast": {metric: entry}, "history": history document,
            "data_time": ISO origin of the prediction, "past": a
            :func:`~workbench.dashboard.hindsight.past_forecast`}``; empty: nothing selected.
        metric: The metric shown.
        compare_hours: Overlay the forecast issued this many hours ago (0: none; the dashboard
            reads it from the daemon's history archive).
    """

    data = t.Dict()
    metric = t.Enum(c.METRIC_NAMES, default_value="cpu_pct")
    compare_hours = t.Int(0)

    def __init__(self, thresholds: Thresholds | None = None, **kwargs: Any) -> None:
        self.thresholds = thresholds or Thresholds()
        self._title = w.HTML("<b>Server</b> · click a tile to see its forecast")
        self._metric = w.Dropdown(options=list(c.METRIC_NAMES), value="cpu_pct", description="Metric")
        hours = [("off", 0)] + [(f"{h} h ago", h) for h in COMPARE_HOURS if h]
        self._compare_picker = w.Dropdown(
            options=hours, value=0, description="Forecast from", style={"description_width": "initial"}
        )
        traces = [go.Scatter(x=[], y=[], **{"name": name, **_trace_style(name)}) for name in TRACES]
        self.figure = go.FigureWidget(data=traces, layout=_layout())
        super().__init__([self._title, w.HBox([self._metric, self._compare_picker]), self.figure], **kwargs)
        self.add_class("wb-server-view")
        w.link((self._metric, "value"), (self, "metric"))
        w.link((self._compare_picker, "value"), (self, "compare_hours"))
        redraw_on_first_view(self.figure, self._blank, self._redraw)
        self.observe(self._on_change, ["data", "metric"])

    def trace(self, name: str) -> go.Scatter:
        """Return the trace called ``name`` (one of :data:`TRACES`)."""
        return self.figure.data[TRACES.index(name)]

    @property
    def title(self) -> str:
        """The text above the chart (which server, and why there is no fan when there is none)."""
        return str(self._title.value)

    def _on_change(self, _change: dict[str, Any] | None = None) -> None:
        data = self.data
        metrics = [
            m for m in c.METRIC_NAMES if m in (data.get("forecast") or data.get("history", {}).get("metrics", {}))
        ]
        if metrics and list(self._metric.options) != metrics:
            with self._metric.hold_trait_notifications():
                self._metric.options = metrics
                if self.metric not in metrics:
                    self._metric.value = metrics[0]
        self._redraw()

    def _blank(self) -> None:
        with self.figure.batch_update():
            for trace in self.figure.data:
                trace.update(x=[], y=[])
            self.figure.layout.shapes, self.figure.layout.annotations = [], []
            self.figure.layout.yaxis.title.text = ""

    def _redraw(self) -> None:
        data, metric = self.data, self.metric
        server = data.get("server")
        history = data.get("history") or {}
        entry = (data.get("forecast") or {}).get(metric) or {}
        hx = [plot_time(parse_time(ts)) for ts in history.get("timestamps", [])]
        hy = (history.get("metrics") or {}).get(metric, [])
        start = forecast_start(history, data.get("data_time"))
        fan = entry.get("source") == SOURCE_TFT and start is not None
        fx = forecast_times(start, len(entry["p50"])) if fan and start is not None else []
        span = [x for x in (hx[:1] + (fx or hx)[-1:]) if x]
        level = self.thresholds.level(metric, data.get("profile") or c.DEFAULT_PROFILE)
        with self.figure.batch_update():
            for q in ("p10", "p50", "p90"):
                self.trace(q).update(x=fx, y=entry.get(q, []) if fan else [])
            self.trace("history").update(x=hx, y=hy)
            then = ((data.get("past") or {}).get("metrics") or {}).get(metric) if self.compare_hours else None
            self.trace("then").update(x=then["x"] if then else [], y=then["p50"] if then else [],
                                      error_y=error_bars(then) if then else {"visible": False})  # fmt: skip
            for name in ("warning", "critical"):
                value = getattr(level, name) if level is not None and span else None
                shown = value is not None
                self.trace(name).update(x=span if shown else [], y=[value] * len(span) if shown else [])
            now = plot_time(start - _STEP) if start is not None and server else None
            self.figure.layout.shapes = [_now_line(now)] if now else []
            self.figure.layout.annotations = [_now_label(now)] if now else []
            unit = c.METRIC_BY_NAME[metric].unit
            self.figure.layout.yaxis.title.text = f"{metric} ({unit})"
        self._title.value = _title(server, data.get("profile"), entry) + _hindsight(self.compare_hours, data)


_STEP = timedelta(seconds=c.STEP_SECONDS)


def _hindsight(hours: int, data: dict[str, Any]) -> str:
    """The title's note on the overlay: which forecast it shows, or why none."""
    if not hours or not data.get("server"):
        return ""
    past = data.get("past") or {}
    if "origin" not in past:
        reason = past.get("error") or "none archived"
        return f"<br><small>forecast from {hours} h ago: {escape(str(reason))}</small>"
    origin = plot_time(parse_time(past["origin"]))
    return f"<br><small>dots: the forecast issued at {origin} UTC ({hours} h ago), p10–p90 bars</small>"


def _title(server: str | None, profile: str | None, entry: dict[str, Any]) -> str:
    if not server:
        return "<b>Server</b> · click a tile to see its forecast"
    name = f"<b>{escape(server)}</b> ({escape(profile or '?')})"
    source = entry.get("source")
    if source == SOURCE_TFT:
        return f"{name} · TFT forecast 8 h ahead: p50 line, p10–p90 band"
    if source == SOURCE_WARMING_UP:
        steps, needed = entry.get("history_steps"), entry.get("needed_steps")
        return f"{name} · warming up: {steps}/{needed} steps of history, no forecast yet"
    if source:
        missing = ", ".join(entry.get("missing") or [])
        return f"{name} · no forecast ({escape(str(source))}{': ' + escape(missing) if missing else ''})"
    return f"{name} · no forecast for this metric"


def _layout() -> go.Layout:
    return go.Layout(
        height=d.FAN_HEIGHT,
        margin={"l": 60, "r": 20, "t": 20, "b": 40},
        template="plotly_white",
        xaxis={"title": {"text": "time (UTC)"}, "type": "date"},
        yaxis={"title": {"text": ""}},
        legend={"orientation": "h", "y": -0.2},
        uirevision="keep",  # keep the user's zoom across refreshes
    )


def _trace_style(name: str) -> dict[str, Any]:
    styles: dict[str, dict[str, Any]] = {
        "p10": {"mode": "lines", "line": {"width": 0, "color": d.FAN_COLOUR}, "showlegend": False, "hoverinfo": "skip"},
        "p90": {
            "mode": "lines",
            "line": {"width": 0, "color": d.FAN_COLOUR},
            "fill": "tonexty",
            "fillcolor": d.FAN_FILL,
            "name": "p10–p90",
        },
        "p50": {"mode": "lines", "line": {"width": 2, "color": d.FAN_COLOUR}},
        "history": {"mode": "lines", "line": {"width": 1.5, "color": d.HISTORY_COLOUR}},
        "warning": {"mode": "lines", "line": {"width": 1, "color": d.AMBER, "dash": "dash"}},
        "critical": {"mode": "lines", "line": {"width": 1, "color": d.RED, "dash": "dash"}},
        "then": {
            "mode": "lines+markers",
            "line": {"width": 1, "color": d.THEN_COLOUR, "dash": "dot"},
            "marker": {"size": 7, "color": d.THEN_COLOUR},
            "name": "forecast then",
        },
    }
    return styles[name]


def _now_line(x: str) -> dict[str, Any]:
    return {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "yref": "paper", "line": {"color": d.GREY}}


def _now_label(x: str) -> dict[str, Any]:
    return {"x": x, "y": 1, "yref": "paper", "text": "now", "showarrow": False, "yanchor": "bottom"}
