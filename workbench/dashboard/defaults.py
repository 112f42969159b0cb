"""The dashboard's defaults: where the daemons are, how often to poll, colours and sizes.

Risk bands and thresholds are not declared here: they come from :mod:`workbench.risk` and
:mod:`workbench.thresholds`, so the dashboard colours a server the way the daemon scores it.
"""

from __future__ import annotations

from workbench import contract as c
from workbench.risk import ELEVATED_RISK_SCORE, HIGH_RISK_SCORE

DAEMON_URL = "http://127.0.0.1:8000"
GENERATOR_URL = "http://127.0.0.1:8001"
DAEMON_URL_ENV = "WORKBENCH_DAEMON_URL"
GENERATOR_URL_ENV = "WORKBENCH_GENERATOR_URL"
API_KEY_ENV = "WORKBENCH_API_KEY"
TIMEOUT_SECONDS = 2.0

REFRESH_SECONDS = 5.0  # the generator's default tick: one new step per refresh
HISTORY_STEPS = c.HORIZON_STEPS  # as much history as forecast: the fan sits in the right half

# Colours (CSS). Risk runs green -> amber -> red across the daemon's own bands.
GREEN, AMBER, RED = "#2e7d32", "#f9a825", "#c62828"
GREY, LIGHT_GREY, INK = "#9e9e9e", "#e0e0e0", "#212121"
SEVERITY_COLOURS = {"warning": AMBER, "critical": RED}
HEALTH_COLOURS = {"healthy": GREEN, "degraded": AMBER, "critical": RED, "unknown": GREY}
SCENARIO_STYLES = {"healthy": "success", "degrading": "warning", "critical": "danger"}
FAN_COLOUR = "#1565c0"
FAN_FILL = "rgba(21, 101, 192, 0.18)"
HISTORY_COLOUR = INK
THEN_COLOUR = "#6a1b9a"  # a forecast issued hours ago, over what then arrived

# Colours of the incident-probability bars (percent): a display choice, not an alert level.
PROBABILITY_ELEVATED_PCT, PROBABILITY_HIGH_PCT = 20.0, 50.0
# Share of the room between a healthy fleet's probability and 100 % a fleet figure takes to colour its gauge.
EXCESS_ELEVATED, EXCESS_HIGH = 0.25, 0.5

# Sizes.
TILE_WIDTH = "150px"
TILE_HEIGHT = "44px"
FAN_HEIGHT = 380
ALERT_ROWS_SHOWN = 50

# Styles for the greyed-out look while the daemon is unreachable (injected once into the page).
CSS = """
<style>
.wb-dashboard.wb-stale .wb-fleet, .wb-dashboard.wb-stale .wb-alerts,
.wb-dashboard.wb-stale .wb-server-view, .wb-dashboard.wb-stale .wb-environment {
  opacity: 0.45; filter: grayscale(1);
}
.wb-alerts table { border-collapse: collapse; font-size: 13px; }
.wb-alerts th, .wb-alerts td { padding: 2px 10px; text-align: left; border-bottom: 1px solid #e0e0e0; }
.wb-tile button { white-space: pre; line-height: 1.2; }
</style>
"""


def risk_colour(score: float | None) -> str:
    """Return the tile colour of a 0-100 risk score (grey when there is no score, e.g. warming up).

    Args:
        score: The daemon's risk score, or ``None``.
    """
    if score is None:
        return GREY
    if score >= HIGH_RISK_SCORE:
        return RED
    if score >= ELEVATED_RISK_SCORE:
        return AMBER
    return GREEN
