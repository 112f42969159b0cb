"""The Voilà fleet dashboard (DESIGN §8): composite ipywidgets fed by the daemons.

``FleetDashboard(DaemonClient())`` is the whole app; ``notebooks/dashboard.ipynb`` only wires
it and ``workbench dashboard`` serves that notebook with Voilà. The widgets are imported on
first use, so that the command line (which imports :mod:`workbench.dashboard.launch`) stays
quick to start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.dashboard.alerts import AlertsTable
    from workbench.dashboard.app import FleetDashboard
    from workbench.dashboard.client import DaemonApi, DaemonClient
    from workbench.dashboard.environment import EnvironmentPanel
    from workbench.dashboard.fleet import FleetOverview
    from workbench.dashboard.scenario import ScenarioButtons
    from workbench.dashboard.server import ServerView

_WHERE = {
    "AlertsTable": "alerts",
    "DaemonApi": "client",
    "DaemonClient": "client",
    "EnvironmentPanel": "environment",
    "FleetDashboard": "app",
    "FleetOverview": "fleet",
    "ScenarioButtons": "scenario",
    "ServerView": "server",
}
__all__ = [
    "AlertsTable",
    "DaemonApi",
    "DaemonClient",
    "EnvironmentPanel",
    "FleetDashboard",
    "FleetOverview",
    "ScenarioButtons",
    "ServerView",
]


def __getattr__(name: str) -> Any:
    """Import a public class from its module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
