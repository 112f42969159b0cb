"""Hindsight: what the daemon forecast some hours ago, read from its history archive (pure functions).

The fan chart can overlay the forecast issued ``hours`` before a server's newest step (its
quantiles at 30 min, 1 h, 2 h, 4 h and 8 h ahead, from ``GET /history?kind=forecasts``) on the
values that then arrived, so a reader sees how good the forecasts were.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from workbench.dashboard.documents import parse_time, plot_time

COMPARE_HOURS = (0, 2, 4, 8)  # 0: no overlay
LOOK_BACK = timedelta(hours=1)  # an origin this much before the time asked for still counts (gaps, lag)
ROWS_LIMIT = 5_000


def query(server: str, at: datetime) -> dict[str, Any]:
    """Return the ``GET /history`` parameters that find the forecasts issued up to ``at``."""
    return {
        "kind": "forecasts",
        "server": server,
        "start": (at - LOOK_BACK).isoformat(),
        "end": at.isoformat(),
        "limit": ROWS_LIMIT,
    }


def past_forecast(rows: list[dict[str, Any]], at: datetime) -> dict[str, Any]:
    """Return the forecast with the newest origin at or before ``at``, per metric.

    Args:
        rows: ``rows`` of a ``GET /history?kind=forecasts`` answer for one server.
        at: The time whose forecast is wanted.

    Returns:
        ``{"origin": ISO origin, "metrics": {metric: {"x": plot times, "p10", "p50", "p90", "steps"}}}``,
        or ``{}`` when no forecast was issued in the hour before ``at``.
    """
    origins = [r["timestamp"] for r in rows if parse_time(r["timestamp"]) <= at]
    if not origins:
        return {}
    origin = max(origins, key=parse_time)
    chosen = sorted((r for r in rows if r["timestamp"] == origin), key=lambda r: (r["metric"], r["step"]))
    metrics: dict[str, dict[str, list[Any]]] = {}
    for row in chosen:
        entry = metrics.setdefault(row["metric"], {"x": [], "steps": [], "p10": [], "p50": [], "p90": []})
        entry["x"].append(plot_time(parse_time(row["target_time"])))
        entry["steps"].append(row["step"])
        for name in ("p10", "p50", "p90"):
            entry[name].append(row.get(name))
    return {"origin": origin, "metrics": metrics}


def error_bars(entry: dict[str, Any]) -> dict[str, Any]:
    """Return plotly's asymmetric ``error_y`` for the p10-p90 band around p50."""
    p10, p50, p90 = entry["p10"], entry["p50"], entry["p90"]
    return {
        "type": "data",
        "symmetric": False,
        "array": [_gap(hi, mid) for hi, mid in zip(p90, p50, strict=True)],
        "arrayminus": [_gap(mid, lo) for lo, mid in zip(p10, p50, strict=True)],
        "visible": True,
    }


def _gap(high: float | None, low: float | None) -> float:
    return 0.0 if high is None or low is None else max(0.0, high - low)
