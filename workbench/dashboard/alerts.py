"""The active alerts table: one row per predictive alert, most urgent first."""

from __future__ import annotations

from html import escape
from typing import Any

import ipywidgets as w
import traitlets as t

from workbench.dashboard import defaults as d
from workbench.dashboard.documents import format_value, percent

COLUMNS = ("severity", "server", "metric", "predicted vs threshold", "in", "probability")


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
            self._table.value = "<i>No predictive alert: no band edge reaches a threshold within 8 h.</i>"
            return
        head = "".join(f"<th>{escape(col)}</th>" for col in COLUMNS)
        rows = "".join(_row(a) for a in alerts[: d.ALERT_ROWS_SHOWN])
        more = len(alerts) - d.ALERT_ROWS_SHOWN
        tail = f"<p>… and {more} more</p>" if more > 0 else ""
        self._table.value = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{tail}"


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
        escape(metric),
        f"{escape(predicted)} vs {escape(threshold)}",
        f"{int(alert.get('minutes_ahead', 0))} min",
        percent(alert.get("probability")),
    ]
    return '<tr class="wb-alert-row">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
