"""Plotly figures shared by the notebooks, reports and dashboard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench import contract as c
from workbench.forecast import Forecast
from workbench.simulator.incidents import PRIMARY_METRICS
from workbench.thresholds import Thresholds

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


# Shading of every non-healthy state (healthy stays unshaded), in contract order.
_STATE_SHADES = dict(
    zip(
        c.STATES,
        (None, "#ffbb78", "#d62728", "#c7c7c7", "#9edae5", "#ffdd71", "#7f7f7f", "#98df8a"),
        strict=True,
    )
)


def incident_timeline(
    frame: pl.DataFrame,
    incidents: pl.DataFrame,
    servers: Sequence[str] | None = None,
    *,
    limit: int = 4,
    thresholds: Thresholds | None = None,
) -> go.Figure:
    """Return one panel per server: incident metrics, shaded states and marked incidents.

    Each primary incident metric is drawn as a percentage of its critical level (the dashed line
    at 100 %), so that a precursor is seen approaching the line. Non-healthy states are shaded;
    every incident's precursor (start to onset) is a yellow band, its onset a cross labelled
    with its type, and its critical phase (onset to end) lies under the red ``critical_issue``
    shading.

    Args:
        frame: Contract frame with states (e.g. simulated).
        incidents: Ground truth (:data:`workbench.simulator.GROUND_TRUTH_SCHEMA`).
        servers: Servers to draw; by default the ``limit`` servers with the most incidents.
        limit: Number of servers drawn when ``servers`` is not given.
        thresholds: Levels the metrics are scaled by (default: :class:`Thresholds`).
    """
    thresholds = thresholds or Thresholds()
    names = list(servers) if servers is not None else _most_incidents(frame, incidents, limit)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names, vertical_spacing=0.06)
    shapes: list[dict[str, Any]] = []
    for row, server in enumerate(names, start=1):
        part = frame.filter(pl.col(c.SERVER) == server).sort(c.TIMESTAMP)
        mine = incidents.filter(pl.col(c.SERVER) == server)
        _add_incident_metrics(fig, part, thresholds, row)
        _add_onsets(fig, mine, row)
        shapes += _state_bands(part, row) + _precursor_bands(mine, row) + [_critical_line(row)]
        fig.update_yaxes(title_text="% of critical", row=row, col=1)
    for state in frame.filter(pl.col(c.SERVER).is_in(names))[c.STATE].unique().sort():
        if _STATE_SHADES.get(state):
            marker = {"color": _STATE_SHADES[state], "symbol": "square", "size": 12}
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker=marker, name=state), row=1, col=1)
    fig.update_layout(shapes=shapes, height=280 * len(names) + 60, margin={"t": 40, "b": 30}, hovermode="x unified")
    return fig


def _most_incidents(frame: pl.DataFrame, incidents: pl.DataFrame, limit: int) -> list[str]:
    counts = frame.select(c.SERVER).unique().join(incidents.group_by(c.SERVER).len(), on=c.SERVER, how="left")
    ranked = counts.sort(pl.col("len").fill_null(0), c.SERVER, descending=[True, False])
    return ranked[c.SERVER].head(limit).to_list()


def _add_incident_metrics(fig: go.Figure, part: pl.DataFrame, thresholds: Thresholds, row: int) -> None:
    profile = part[c.PROFILE][0] if part.height else c.DEFAULT_PROFILE
    for k, metric in enumerate(PRIMARY_METRICS):
        level = thresholds.level(metric, profile)
        if level is None:
            continue
        fig.add_trace(
            go.Scattergl(
                x=part[c.TIMESTAMP].to_list(),
                y=(part[metric] * (100.0 / level.critical)).to_list(),
                name=metric,
                legendgroup=metric,
                showlegend=row == 1,
                line={"width": 1, "color": _color(k)},
            ),
            row=row,
            col=1,
        )


def _add_onsets(fig: go.Figure, mine: pl.DataFrame, row: int) -> None:
    done = mine.drop_nulls("onset")
    fig.add_trace(
        go.Scatter(
            x=done["onset"].to_list(),
            y=[100.0] * done.height,
            mode="markers+text",
            text=done["incident_type"].to_list(),
            textposition="top center",
            marker={"symbol": "x", "size": 9, "color": "#d62728"},
            name="onset",
            legendgroup="onset",
            showlegend=row == 1,
        ),
        row=row,
        col=1,
    )


def _axes(row: int) -> tuple[str, str]:
    suffix = "" if row == 1 else str(row)
    return f"x{suffix}", f"y{suffix}"


def _band(row: int, x0: Any, x1: Any, color: str, opacity: float) -> dict[str, Any]:
    x, y = _axes(row)
    return {
        "type": "rect", "xref": x, "yref": f"{y} domain", "x0": x0, "x1": x1, "y0": 0, "y1": 1,
        "fillcolor": color, "opacity": opacity, "line": {"width": 0}, "layer": "below",
    }  # fmt: skip


def _critical_line(row: int) -> dict[str, Any]:
    x, y = _axes(row)
    line = {"color": "#d62728", "dash": "dash", "width": 1}
    return {"type": "line", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1, "y0": 100, "y1": 100, "line": line}


def _state_bands(part: pl.DataFrame, row: int) -> list[dict[str, Any]]:
    step = pl.duration(seconds=c.STEP_SECONDS)
    runs = (
        part.with_columns(pl.col(c.STATE).rle_id().alias("run"))
        .group_by("run", maintain_order=True)
        .agg(
            pl.col(c.STATE).first(),
            pl.col(c.TIMESTAMP).min().alias("x0"),
            (pl.col(c.TIMESTAMP).max() + step).alias("x1"),
        )
    )
    return [
        _band(row, x0, x1, _STATE_SHADES[state] or "", 0.35)
        for state, x0, x1 in runs.select(c.STATE, "x0", "x1").iter_rows()
        if _STATE_SHADES.get(state)
    ]


def _precursor_bands(mine: pl.DataFrame, row: int) -> list[dict[str, Any]]:
    rows = mine.select("precursor_start", pl.coalesce("onset", "peak")).iter_rows()
    return [_band(row, start, onset, "#fff176", 0.45) for start, onset in rows]


# --------------------------------------------------------------------------- evaluation


def score_by_horizon(
    table: pl.DataFrame, column: str = "mase", *, target: tuple[float, float] | None = None
) -> go.Figure:
    """Return one line per model of a score against the lead time.

    Args:
        table: Scores per ``model`` and ``horizon_step`` (e.g. ``BacktestResult.summary("horizon_step")``).
        column: Score to draw.
        target: A ``(low, high)`` band to shade, e.g. the coverage target.
    """
    fig = go.Figure()
    for k, (model,) in enumerate(table.select("model").unique(maintain_order=True).iter_rows()):
        part = table.filter(pl.col("model") == model).sort("horizon_step")
        minutes = (part["horizon_step"] * c.STEP_SECONDS / 60).to_list()
        fig.add_trace(go.Scatter(x=minutes, y=part[column].to_list(), name=model, line={"color": _color(k)}))
    if target is not None:
        fig.add_hrect(y0=target[0], y1=target[1], fillcolor="green", opacity=0.1, line_width=0)
    fig.update_layout(
        title=f"{column} by lead time", xaxis_title="minutes ahead", yaxis_title=column, height=320, margin={"t": 40}
    )
    return fig


def lead_time_histogram(outcomes: pl.DataFrame, *, bin_minutes: int = 30) -> go.Figure:
    """Return the distribution of warning lead times, one overlaid histogram per rule.

    Args:
        outcomes: One row per rule and incident with ``lead_minutes`` (null when not warned in time).
        bin_minutes: Width of a bar.
    """
    fig = go.Figure()
    for k, (rule,) in enumerate(outcomes.select("rule").unique(maintain_order=True).iter_rows()):
        leads = outcomes.filter(pl.col("rule") == rule)["lead_minutes"].drop_nulls().to_list()
        bins = {"start": 0, "size": bin_minutes}
        fig.add_trace(go.Histogram(x=leads, name=rule, xbins=bins, opacity=0.6, marker={"color": _color(k)}))
    fig.update_layout(
        barmode="overlay", title="lead time of timely warnings", xaxis_title="minutes before onset", height=320
    )
    fig.update_yaxes(title_text="incidents")
    return fig


def fan_comparison(
    history: pl.DataFrame, forecasts: dict[str, Forecast], server: str, metric: str, *, history_steps: int = 96
) -> go.Figure:
    """Return side-by-side p10/p50/p90 fans of several models for one server and metric, with what happened.

    Args:
        history: Contract frame with the server's observations before and after the origin.
        forecasts: Forecasts by model name, all from the same origin and including ``server``.
        server: Server to draw.
        metric: Metric to draw.
        history_steps: Observed steps shown before the origin.
    """
    fig = make_subplots(rows=1, cols=len(forecasts), shared_yaxes=True, subplot_titles=list(forecasts))
    part = history.filter(pl.col(c.SERVER) == server).sort(c.TIMESTAMP)
    for col, fc in enumerate(forecasts.values(), start=1):
        i, j = fc.servers.index(server), fc.targets.index(metric)
        times, q = fc.timestamps(i), fc.quantiles[i, j]
        origin = times[0] - (times[1] - times[0]) if len(times) > 1 else times[0]
        seen = part.filter(pl.col(c.TIMESTAMP) <= times[-1]).tail(history_steps + len(times))
        first = col == 1
        fig.add_trace(
            go.Scatter(x=seen[c.TIMESTAMP].to_list(), y=seen[metric].to_list(), name="observed", showlegend=first,
                       line={"color": "black", "width": 1}), row=1, col=col,
        )  # fmt: skip
        fig.add_trace(go.Scatter(x=times, y=q[:, 2].tolist(), line={"width": 0}, showlegend=False), row=1, col=col)
        band = go.Scatter(
            x=times, y=q[:, 0].tolist(), name="p10-p90", fill="tonexty", fillcolor=_BAND, line={"width": 0},
            showlegend=first,
        )  # fmt: skip
        fig.add_trace(band, row=1, col=col)
        p50 = go.Scatter(x=times, y=q[:, 1].tolist(), name="p50", line={"dash": "dash", "color": _color(0)})
        fig.add_trace(p50.update(showlegend=first), row=1, col=col)
        fig.add_vline(x=origin, line={"color": "grey", "dash": "dot"}, row=1, col=col)
    fig.update_layout(title=f"{server} {metric}", height=340, margin={"t": 60, "b": 30})
    fig.update_yaxes(title_text=c.METRIC_BY_NAME[metric].unit, row=1, col=1)
    return fig


def warmup_plot(curve: pl.DataFrame, *, recommended: int, current: int, column: str = "mase") -> go.Figure:
    """Return a score against the steps of history, with the recommended and the bundle's minimum marked.

    Args:
        curve: ``history_steps`` and scores (e.g. from ``workbench.evaluation.warmup_curve``).
        recommended: The recommended minimum encoder length.
        current: The bundle's ``min_encoder_length``.
        column: Score to draw.
    """
    ordered = curve.sort("history_steps")
    fig = go.Figure(go.Scatter(x=ordered["history_steps"].to_list(), y=ordered[column].to_list(), mode="lines+markers"))
    fig.add_vline(x=recommended, line={"color": "green", "dash": "dash"}, annotation_text=f"recommended {recommended}")
    fig.add_vline(x=current, line={"color": "grey", "dash": "dot"}, annotation_text=f"bundle {current}")
    fig.update_layout(title=f"{column} by steps of history", xaxis_title="steps of history", yaxis_title=column)
    fig.update_layout(height=320, margin={"t": 40})
    return fig


def size_study_plot(table: pl.DataFrame, *, chosen: str, cost: str = "engine_ms") -> go.Figure:
    """Return held-out MASE ratio against a cost per network size, the chosen size marked.

    Args:
        table: One row per candidate (``candidate``, ``mase_ratio`` and the cost column), e.g.
            from :func:`workbench.evaluation.size_study.study_candidate`.
        chosen: The candidate picked as the reference network.
        cost: Column on the x axis (``engine_ms``, ``train_seconds``, ``parameters``).
    """
    colours = ["#2ca02c" if name == chosen else "#1f77b4" for name in table["candidate"].to_list()]
    fig = go.Figure(
        go.Scatter(
            x=table[cost].to_list(),
            y=table["mase_ratio"].to_list(),
            mode="markers+text",
            text=table["candidate"].to_list(),
            textposition="top center",
            marker={"size": 11, "color": colours},
        )
    )
    labels = {"engine_ms": "Engine.forecast, 1,000 servers (ms)", "train_seconds": "training time (s)"}
    fig.update_layout(
        title=f"held-out MASE / seasonal naive against {cost} (green: the reference)",
        xaxis_title=labels.get(cost, cost),
        yaxis_title="MASE ratio",
        height=360,
        margin={"t": 50},
    )
    return fig


def reliability_diagram(table: pl.DataFrame, *, title: str = "reliability") -> go.Figure:
    """Return observed rate against mean predicted probability per bin, one line per fleet and window.

    Args:
        table: Rows of :func:`workbench.evaluation.probability.reliability` with ``fleet`` and
            ``window`` columns; a marker's size grows with the bin's examples.
        title: Figure title.
    """
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": "grey"}))
    for k, ((fleet, window), part) in enumerate(table.group_by("fleet", "window", maintain_order=True)):
        sizes = (6 + 3 * part["examples"].log10()).to_list()
        fig.add_trace(
            go.Scatter(
                x=part["predicted"].to_list(),
                y=part["observed"].to_list(),
                mode="lines+markers",
                name=f"{fleet} · {window}",
                marker={"size": sizes, "color": _color(k)},
                line={"color": _color(k)},
                customdata=part["examples"].to_list(),
                hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<br>%{customdata} examples",
            )
        )
    fig.update_layout(
        title=title, xaxis_title="predicted probability", yaxis_title="observed frequency", height=420, margin={"t": 50}
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1])
    return fig


def precision_recall_plot(curve: pl.DataFrame, *, chosen: float, others: pl.DataFrame | None = None) -> go.Figure:
    """Return event-level precision against recall over the alert threshold, the chosen one marked.

    Args:
        curve: Rows of :func:`workbench.early_warning.fit.threshold_curve`.
        chosen: The threshold the bundle alerts at.
        others: Optional ``rule, recall, precision`` rows of other rules, drawn as points.
    """
    pts = curve.drop_nulls(["recall", "precision"])
    fig = go.Figure(
        go.Scatter(
            x=pts["recall"].to_list(),
            y=pts["precision"].to_list(),
            mode="lines+markers",
            name="calibrated rule",
            customdata=pts["threshold"].to_list(),
            hovertemplate="threshold %{customdata}<br>recall %{x:.2f}<br>precision %{y:.2f}",
        )
    )
    mine = pts.filter(pl.col("threshold") == chosen)
    if mine.height:
        fig.add_trace(
            go.Scatter(
                x=mine["recall"].to_list(),
                y=mine["precision"].to_list(),
                mode="markers",
                name=f"chosen τ = {chosen:g}",
                marker={"size": 14, "color": "#2ca02c", "symbol": "star"},
            )
        )
    for k, row in enumerate((others if others is not None else pl.DataFrame()).to_dicts()):
        fig.add_trace(
            go.Scatter(
                x=[row["recall"]],
                y=[row["precision"]],
                mode="markers",
                name=row["rule"],
                marker={"size": 11, "color": _color(k + 2), "symbol": "diamond"},
            )
        )
    fig.update_layout(
        title="event-level precision–recall (warning ≥ 30 min before onset)",
        xaxis_title="recall",
        yaxis_title="precision",
        height=420,
        margin={"t": 50},
    )
    fig.update_xaxes(range=[0, 1.02])
    fig.update_yaxes(range=[0, 1.02])
    return fig
