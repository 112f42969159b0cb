"""The active alerts table: one row per predictive alert, most urgent first."""

from __future__ import annotations

from html import escape
from typing import Any

import ipywidgets as w
import traitlets as t

from workbench.dashboard import defaults as d
from workbench.dashboard.documents import format_value, percent

COLUMNS = ("severity", "server", "what the model says", "predicted vs threshold", "in", "probability", "rule")
LEGEND = {
    "calibrated": "calibrated: the chance the metric is in an incident within 8 h, learned from ground truth; "
    "critical from the threshold fitted for 70 % precision, warning from half of it",
    "band_edge": "band edge: the forecast's p90 reaches the level (probability not checked against incidents)",
    "predict_linear": "predict_linear: the last hour's straight line reaches the level",
    "static": "static: the current value is past the level",
}


class AlertsTable(w.VBox):
    """The daemon's active alerts as a table; rows appear and clear as :attr:`alerts` changes.

    Attributes:
        alerts: The ``alerts`` list of ``GET /predictions/current`` (already most urgent first).
    """

    alerts: t.List[dict[str, Any]] = t.List()

    def __init__(self, **kwargs: Any) -> None:
        self._header = w.HTML()
        self._table = w.HTML()
        super().__init__([self._header, self._table], **kwargs)
        self.add_class("wb-alerts")
        self.observe(self._on_change, "alerts")
        self._on_change()

    @property
    def row_count(self) -> int:
        """Rows the table shows now."""
        return self._table.value.count('class="wb-alert-row"')

    @property
    def html(self) -> str:
        """The table's HTML (for tests and for reading what is shown)."""
        return str(self._table.value)

    def _on_change(self, _change: dict[str, Any] | None = None) -> None:
        alerts = self.alerts
        critical = sum(1 for a in alerts if a.get("severity") == "critical")
        counts = f"{len(alerts)} ({critical} critical)" if alerts else "none"
        self._header.value = f"<b>Active alerts</b> · {counts}"
        if not alerts:
            self._table.value = "<i>No predictive alert: no server is expected to reach an incident within 8 h.</i>"
            return
        head = "".join(f"<th>{escape(col)}</th>" for col in COLUMNS)
        rows = "".join(_row(a) for a in alerts[: d.ALERT_ROWS_SHOWN])
        more = len(alerts) - d.ALERT_ROWS_SHOWN
        tail = f"<p>… and {more} more</p>" if more > 0 else ""
        rules = dict.fromkeys(str(a.get("rule", "band_edge")) for a in alerts)
        legend = "".join(f"<li>{escape(LEGEND[r])}</li>" for r in rules if r in LEGEND)
        legend = f'<ul class="wb-alert-legend" style="font-size:smaller;color:#555">{legend}</ul>' if legend else ""
        self._table.value = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{tail}{legend}"


def _row(alert: dict[str, Any]) -> str:
    severity = str(alert.get("severity", ""))
    metric = str(alert.get("metric", ""))
    colour = d.SEVERITY_COLOURS.get(severity, d.GREY)
    badge = f'<span style="color:white;background:{colour};padding:0 6px;border-radius:3px">{escape(severity)}</span>'
    predicted = format_value(metric, alert.get("predicted_value"))
    threshold = format_value(metric, alert.get("threshold"))
    cells = [
        badge,
        escape(str(alert.get("server", ""))),
        escape(str(alert.get("summary") or metric)),
        f"{escape(predicted)} vs {escape(threshold)}",
        "now" if alert.get("already_past") else f"{int(alert.get('minutes_ahead', 0))} min",
        percent(alert.get("probability")),
        escape(str(alert.get("rule", "band_edge"))),
    ]
    return '<tr class="wb-alert-row">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
