"""Plotly figures shared by the notebooks, reports and dashboard."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench import contract as c
from workbench.inference.forecast import Forecast

_BAND = "rgba(31, 119, 180, 0.2)"


def fleet_lines(
    frame: pl.DataFrame, servers: Sequence[str], metrics: Sequence[str] = ("cpu_pct", "mem_pct")
) -> go.Figure:
    """Return one panel per metric with a line per server.

    Args:
        frame: Contract frame.
        servers: Servers to draw.
        metrics: Metrics, one panel each.
    """
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=list(metrics))
    for row, metric in enumerate(metrics, start=1):
        unit = c.METRIC_BY_NAME[metric].unit
        for k, server in enumerate(servers):
            part = frame.filter(pl.col(c.SERVER) == server).sort(c.TIMESTAMP)
            fig.add_trace(
                go.Scattergl(
                    x=part[c.TIMESTAMP].to_list(),
                    y=part[metric].to_list(),
                    name=server,
                    legendgroup=server,
                    showlegend=row == 1,
                    line={"width": 1, "color": _color(k)},
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text=unit, row=row, col=1)
    fig.update_layout(height=260 * len(metrics), margin={"t": 40, "b": 30}, hovermode="x unified")
    return fig


def fan_chart(
    history: pl.DataFrame, forecast: Forecast, server: str, metric: str, *, history_steps: int = 288
) -> go.Figure:
    """Return a server's recent history and its p10/p50/p90 forecast fan for one metric.

    Args:
        history: Contract frame holding the server's observations.
        forecast: A fleet forecast that includes ``server``.
        server: Server to draw.
        metric: Metric to draw.
        history_steps: Observed steps shown before the forecast origin.
    """
    i, j = forecast.servers.index(server), forecast.targets.index(metric)
    past = history.filter(pl.col(c.SERVER) == server).sort(c.TIMESTAMP).tail(history_steps)
    times = forecast.timestamps(i)
    q = forecast.quantiles[i, j]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=past[c.TIMESTAMP].to_list(), y=past[metric].to_list(), name="observed"))
    fig.add_trace(go.Scatter(x=times, y=q[:, 2].tolist(), name="p90", line={"width": 0}, showlegend=False))
    fig.add_trace(
        go.Scatter(x=times, y=q[:, 0].tolist(), name="p10-p90", fill="tonexty", fillcolor=_BAND, line={"width": 0})
    )
    fig.add_trace(go.Scatter(x=times, y=q[:, 1].tolist(), name=f"p50 ({forecast.source})", line={"dash": "dash"}))
    if len(past):
        fig.add_vline(x=past[c.TIMESTAMP][-1], line={"color": "grey", "dash": "dot"})
    unit = c.METRIC_BY_NAME[metric].unit
    fig.update_layout(title=f"{server} {metric}", yaxis_title=unit, height=320, margin={"t": 40, "b": 30})
    return fig


def loss_curve(history: Sequence[float]) -> go.Figure:
    """Return the validation loss per epoch."""
    fig = go.Figure(go.Scatter(x=list(range(len(history))), y=list(history), mode="lines+markers"))
    fig.update_layout(title="validation loss", xaxis_title="epoch", yaxis_title="quantile loss", height=300)
    return fig


def _color(k: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    return palette[k % len(palette)]
