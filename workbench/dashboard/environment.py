"""The environment panel: fleet incident probabilities, high-risk servers, health and warm-up."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w
import traitlets as t

from workbench.dashboard import defaults as d
from workbench.dashboard.documents import percent


class EnvironmentPanel(w.VBox):
    """Fleet-wide figures as text and two bars (0-100 %), and a warm-up bar while servers warm up.

    Attributes:
        environment: The ``environment`` object of ``GET /predictions/current``.
        warmup: The ``warmup`` object of ``GET /status`` (empty: unknown).
        fit: The ``model_fit`` object of the document's metadata (drift state and reasons).
    """

    environment = t.Dict()
    warmup = t.Dict()
    fit = t.Dict()

    def __init__(self, **kwargs: Any) -> None:
        self.p30m = w.HTML()
        self.p30m.add_class("wb-env-p30m")
        self.p8h = w.HTML()
        self.p8h.add_class("wb-env-p8h")
        self.high_risk = w.HTML()
        self.health = w.HTML()
        self.model_fit = w.HTML()
        self.model_fit.add_class("wb-env-fit")
        self.gauges = [w.FloatProgress(min=0.0, max=100.0, description=lead) for lead in ("30 min", "8 h")]
        self.warmup_label = w.HTML()
        self.warmup_bar = w.FloatProgress(min=0.0, max=100.0, value=0.0, bar_style="info")
        self._warmup_box = w.VBox([self.warmup_label, self.warmup_bar], layout=w.Layout(display="none"))
        figures = w.VBox([self.p30m, self.p8h, self.high_risk, self.health, self.model_fit])
        super().__init__([w.HTML("<b>Environment</b>"), figures, w.VBox(self.gauges), self._warmup_box], **kwargs)
        self.add_class("wb-environment")
        self.observe(self._on_change, ["environment", "warmup", "fit"])
        self._on_change()

    @property
    def warming_up(self) -> bool:
        """Whether the warm-up bar is shown."""
        return self._warmup_box.layout.display != "none"

    def _on_change(self, _change: dict[str, Any] | None = None) -> None:
        env = self.environment
        p30, p8 = env.get("incident_probability_30m"), env.get("incident_probability_8h")
        kind = env.get("probabilities")
        note = {
            "calibrated": ' <span title="P(at least one server is in an incident within the window), learned from '
            "simulated ground truth (the bundle's calibration.json)\">(calibrated)</span>",
            "uncalibrated": ' <span style="color:#b35900" title="band exceedances never checked against incidents: '
            'run workbench calibrate-incidents on the bundle">(uncalibrated)</span>',
        }.get(str(kind), "")
        base30, base8 = env.get("healthy_probability_30m"), env.get("healthy_probability_8h")
        self.p30m.value = f"Incident probability (30 min): <b>{percent(p30)}</b>{note}{_usual(base30)}"
        self.p8h.value = f"Incident probability (8 h): <b>{percent(p8)}</b>{note}{_usual(base8)}"
        total = env.get("total_servers")
        self.high_risk.value = f"High-risk servers: <b>{env.get('high_risk_servers', '–')}</b> of {total or 0}"
        health = str(env.get("fleet_health", "unknown"))
        colour = d.HEALTH_COLOURS.get(health, d.GREY)
        self.health.value = f'Fleet health: <b style="color:{colour}">{health}</b>'
        self.model_fit.value = model_fit_text(self.fit)
        self._draw_gauges()
        self._show_warmup(self.warmup)

    def _draw_gauges(self) -> None:
        env = self.environment
        for gauge, window in zip(self.gauges, ("30m", "8h"), strict=True):
            p = env.get(f"incident_probability_{window}")
            gauge.value = 100 * (p or 0.0)
            gauge.bar_style = gauge_style(p or 0.0, env.get(f"healthy_probability_{window}"))

    def _show_warmup(self, warmup: dict[str, Any]) -> None:
        if not warmup or warmup.get("is_warmed_up") or not warmup.get("total_servers"):
            self._warmup_box.layout.display = "none"
            return
        ready, total = warmup.get("ready_servers", 0), warmup["total_servers"]
        progress = float(warmup.get("progress_percent", 0.0))
        needed = warmup.get("threshold")
        self.warmup_label.value = (
            f"Warming up: <b>{ready}/{total}</b> servers ready ({progress:.0f} %; each needs {needed} steps)"
        )
        self.warmup_bar.value = progress
        self._warmup_box.layout.display = "flex"


FIT_WORDS = {
    "fits": ("#2e7d32", "the model fits"),
    "inputs_shifted": ("#b35900", "inputs unlike training"),
    "no_longer_fits": ("#c62828", "the model no longer fits"),
    "warming_up": (d.GREY, "not scored yet"),
}


def model_fit_text(fit: dict[str, Any]) -> str:
    """Return the drift line: the state in words, coloured, with its reasons (``GET /drift/status``)."""
    if not fit:
        return f'Model fit: <b style="color:{d.GREY}">unknown</b>'
    colour, words = FIT_WORDS.get(str(fit.get("state")), (d.GREY, str(fit.get("state"))))
    reasons = "; ".join(html.escape(str(r)) for r in fit.get("reasons") or [])
    detail = f" <small>({reasons})</small>" if reasons else ""
    return f'Model fit: <b style="color:{colour}" title="GET /drift/status">{words}</b>{detail}'


def gauge_style(p: float, healthy: float | None) -> str:
    """Return the gauge's colour for fleet probability ``p``, read against a healthy fleet's figure.

    A fleet of many servers has a high 8-hour figure on an ordinary day (some server somewhere
    has an incident); the colour says how much of the room above that figure ``p`` takes
    (:data:`~workbench.dashboard.defaults.EXCESS_ELEVATED`, ``EXCESS_HIGH``), and never colours
    a figure below the fixed elevated and high levels. Without a healthy figure, the levels alone.
    """
    pct = 100 * p
    excess = 1.0 if healthy is None else (p - healthy) / max(1.0 - healthy, 1e-9)
    if pct >= d.PROBABILITY_HIGH_PCT and excess >= d.EXCESS_HIGH:
        return "danger"
    if pct >= d.PROBABILITY_ELEVATED_PCT and excess >= d.EXCESS_ELEVATED:
        return "warning"
    return "success"


def _usual(healthy: float | None) -> str:
    if healthy is None:
        return ""
    return (
        ' <span style="color:#666" title="what a healthy fleet of this many servers shows on an ordinary day, '
        f'from the validation fleets">(healthy fleet: {percent(healthy)})</span>'
    )
