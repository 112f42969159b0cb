"""Reading the daemon's JSON documents into what the panels show (pure functions, no widgets).

The shapes are those of :mod:`workbench.service.schemas`: ``GET /predictions/current``
(``predictions``, ``alerts``, ``environment``, ``server_risk``, ``metadata``), ``GET /status``
and ``GET /history/{server}``. Times are shown in UTC and handed to plotly without an offset,
because plotly drops offsets inconsistently (traces vs shapes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from workbench import contract as c
from workbench.forecast import SOURCE_TFT, SOURCE_WARMING_UP

__all__ = ["SOURCE_TFT", "SOURCE_WARMING_UP"]  # re-exported for the panels


def parse_time(text: str) -> datetime:
    """Return the UTC datetime of an ISO 8601 string (``Z`` or an offset; naive means UTC)."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def plot_time(when: datetime) -> str:
    """Return ``when`` as the offset-free UTC text plotly reads the same on every element."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def server_rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return one row per server of a predictions document: source, risk, profile, driver, warm-up.

    Args:
        doc: A ``GET /predictions/current`` document, full or summary (``?view=summary``).

    Returns:
        ``{server: {"source", "risk_score", "profile", "driver", "history_steps", "needed_steps"}}``;
        ``risk_score`` is ``None`` for a server without a forecast.
    """
    risk = doc.get("server_risk") or {}
    rows: dict[str, dict[str, Any]] = {}
    for server, first in _server_entries(doc).items():
        entry = risk.get(server) or {}
        rows[server] = {
            "source": first.get("source", SOURCE_WARMING_UP),
            "risk_score": entry.get("risk_score"),
            "profile": entry.get("profile") or first.get("profile") or c.infer_profile(server),
            "driver": entry.get("driver"),
            "history_steps": first.get("history_steps"),
            "needed_steps": first.get("needed_steps"),
        }
    return rows


def _server_entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each server's source and warm-up figures: its summary entry, or its first metric's in a full document."""
    if "servers" in doc:
        return dict(doc["servers"] or {})
    return {server: next(iter(metrics.values()), {}) for server, metrics in (doc.get("predictions") or {}).items()}


def forecast_start(history: dict[str, Any], data_time: str | None) -> datetime | None:
    """Return the time of a server's first forecast step.

    The prediction's origin (``metadata.data_time``, the fleet's newest step) is one step
    before it; the history document says where the server's own next forecast begins. The
    earlier of the two is right both when the history has moved on since the prediction and
    when this server lags the fleet.
    """
    starts = []
    if history.get("forecast_start"):
        starts.append(parse_time(history["forecast_start"]))
    if data_time:
        starts.append(parse_time(data_time) + timedelta(seconds=c.STEP_SECONDS))
    return min(starts) if starts else None


def forecast_times(start: datetime, steps: int) -> list[str]:
    """Return the plot times of ``steps`` forecast steps from ``start``."""
    return [plot_time(start + timedelta(seconds=k * c.STEP_SECONDS)) for k in range(steps)]


def format_value(metric: str, value: float | None) -> str:
    """Return a metric value with its contract unit, e.g. ``97.2 %``, ``0.031`` or ``180 ms``."""
    if value is None:
        return "–"
    unit = c.METRIC_BY_NAME[metric].unit if metric in c.METRIC_BY_NAME else ""
    if unit == "fraction":
        return f"{value:.3f}"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:.1f} {unit}".rstrip()


def percent(probability: float | None) -> str:
    """Return a probability in [0, 1] as a percentage with one decimal (``–`` when unknown)."""
    return "–" if probability is None else f"{100 * probability:.1f} %"


def clock(text: str | None) -> str:
    """Return an ISO time as ``YYYY-MM-DD HH:MM:SS UTC`` (``–`` when absent)."""
    return "–" if not text else f"{plot_time(parse_time(text))} UTC"
