"""Scenario buttons: switch the generator daemon's scenario live and show the one in force."""

from __future__ import annotations

from html import escape
from typing import Any

import ipywidgets as w
import traitlets as t

from workbench.dashboard import defaults as d
from workbench.dashboard.client import DaemonApi
from workbench.errors import DaemonError
from workbench.simulator.scenarios import SCENARIO_NAMES


class ScenarioButtons(w.VBox):
    """One button per simulator scenario; a click calls ``client.set_scenario``.

    Args:
        client: Talks to the generator daemon.

    Attributes:
        active: The scenario in force (``None``: not known yet).
        error: The last error talking to the generator ("" when the last call worked).
    """

    active = t.Unicode(None, allow_none=True)
    error = t.Unicode("")

    def __init__(self, client: DaemonApi, **kwargs: Any) -> None:
        self.client = client
        self.buttons: dict[str, w.Button] = {}
        for name in SCENARIO_NAMES:
            button = w.Button(description=name, tooltip=f"switch the generator to the {name} scenario")
            button.add_class(f"wb-scenario-{name}")
            button.on_click(lambda _button, name=name: self.switch(name))
            self.buttons[name] = button
        self.label = w.HTML()
        self.label.add_class("wb-scenario-active")
        self._error = w.HTML()
        row = w.HBox(list(self.buttons.values()))
        super().__init__([w.HTML("<b>Scenario</b> (generator)"), row, self.label, self._error], **kwargs)
        self.add_class("wb-scenario")
        self.observe(self._on_change, ["active", "error"])
        self._on_change()

    def switch(self, name: str) -> None:
        """Ask the generator to switch to ``name``; on failure keep the old one and show why."""
        try:
            answer = self.client.set_scenario(name)
        except DaemonError as exc:
            self.error = str(exc)
            return
        self.error = ""
        self.active = str(answer.get("new_scenario", name))

    def _on_change(self, _change: dict[str, Any] | None = None) -> None:
        active = self.active
        self.label.value = f"Active scenario: <b>{escape(active)}</b>" if active else "Active scenario: <b>unknown</b>"
        for name, button in self.buttons.items():
            button.button_style = d.SCENARIO_STYLES.get(name, "") if name == active else ""
        self._error.value = f'<span style="color:{d.RED}">{escape(self.error)}</span>' if self.error else ""
