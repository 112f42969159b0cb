"""The fleet overview: one tile per server, coloured by risk, sortable, filterable, clickable."""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import traitlets as t

from workbench import contract as c
from workbench.dashboard import defaults as d
from workbench.dashboard.documents import SOURCE_TFT, SOURCE_WARMING_UP

ALL_PROFILES = "all"
SORT_KEYS = ("risk", "name")


class FleetOverview(w.VBox):
    """Every server as a tile coloured by its 0-100 risk score; clicking one selects it.

    Set :attr:`servers` (rows from :func:`workbench.dashboard.documents.server_rows`); tiles are
    created once per server and reused on every refresh, removed when a server leaves.

    Attributes:
        servers: ``{server: {"source", "risk_score", "profile", "driver", ...}}``.
        sort_by: ``risk`` (highest first, servers without a score last) or ``name``.
        profile: Show only servers of this profile (``all``: every server).
        selected_server: The server clicked or chosen (``None``: none yet).
    """

    servers = t.Dict()
    sort_by = t.Enum(SORT_KEYS, default_value="risk")
    profile = t.Enum((ALL_PROFILES, *c.PROFILES), default_value=ALL_PROFILES)
    selected_server = t.Unicode(None, allow_none=True)

    def __init__(self, **kwargs: Any) -> None:
        self.tiles: dict[str, w.Button] = {}
        self._shown: list[str] = []
        self._header = w.HTML("<b>Fleet</b>")
        self._sort = w.ToggleButtons(options=[("risk", "risk"), ("name", "name")], description="Sort by")
        self._sort.style.button_width = "70px"
        self._profile = w.Dropdown(options=[ALL_PROFILES, *c.PROFILES], description="Profile")
        self._choose = w.Dropdown(options=[], value=None, description="Server")
        self._grid = w.Box(layout=w.Layout(display="flex", flex_flow="row wrap", gap="4px"))
        controls = w.HBox([self._sort, self._profile, self._choose], layout=w.Layout(flex_flow="row wrap"))
        super().__init__([self._header, controls, self._grid], **kwargs)
        self.add_class("wb-fleet")
        w.link((self._sort, "value"), (self, "sort_by"))
        w.link((self._profile, "value"), (self, "profile"))
        self._choose.observe(self._on_choose, "value")
        self.observe(self._on_change, ["servers", "sort_by", "profile"])
        self.observe(self._on_select, "selected_server")

    @property
    def shown(self) -> list[str]:
        """The servers whose tiles are shown, in display order."""
        return list(self._shown)

    def _on_change(self, _change: dict[str, Any] | None = None) -> None:
        rows = self.servers
        for gone in set(self.tiles) - set(rows):
            self.tiles.pop(gone).close()
        for name, row in rows.items():
            self._paint(self.tiles.get(name) or self._new_tile(name), name, row)
        order = sorted(rows, key=self._sort_key)
        shown = [n for n in order if self.profile == ALL_PROFILES or rows[n]["profile"] == self.profile]
        self._shown = shown
        children = tuple(self.tiles[n] for n in shown)
        if children != self._grid.children:
            self._grid.children = children
        names = sorted(rows)
        if list(self._choose.options) != names:
            with self._choose.hold_trait_notifications():
                self._choose.options = names
                self._choose.value = self.selected_server if self.selected_server in rows else None
        counts = f"{len(shown)} of {len(rows)} servers" if len(shown) != len(rows) else f"{len(rows)} servers"
        self._header.value = f"<b>Fleet</b> · {counts} · colour = risk score 0–100"

    def _sort_key(self, name: str) -> tuple[Any, ...]:
        if self.sort_by == "name":
            return (name,)
        score = self.servers[name]["risk_score"]
        return (score is None, -(score or 0.0), name)

    def _new_tile(self, name: str) -> w.Button:
        tile = w.Button(layout=w.Layout(width=d.TILE_WIDTH, height=d.TILE_HEIGHT, margin="0"))
        tile.add_class("wb-tile")
        tile.style.text_color = "white"
        tile.style.font_weight = "bold"
        tile.on_click(lambda _button, name=name: self._pick(name))
        self.tiles[name] = tile
        return tile

    def _paint(self, tile: w.Button, name: str, row: dict[str, Any]) -> None:
        score = row.get("risk_score") if row.get("source") == SOURCE_TFT else None
        if score is not None:
            tile.description = f"{name} {score:.0f}"
            driver = f", driven by {row['driver']}" if row.get("driver") else ""
            tile.tooltip = f"{name} ({row['profile']}): risk {score:.1f}/100{driver}"
        elif row.get("source") == SOURCE_WARMING_UP:
            steps, needed = row.get("history_steps"), row.get("needed_steps")
            tile.description = f"{name} warming up"
            tile.tooltip = f"{name} ({row['profile']}): warming up, {steps}/{needed} steps of history"
        else:
            tile.description = f"{name} no forecast"
            tile.tooltip = f"{name} ({row['profile']}): no forecast ({row.get('source')})"
        tile.style.button_color = d.risk_colour(score)
        tile.layout.border = f"3px solid {d.INK}" if name == self.selected_server else "3px solid transparent"

    def _pick(self, name: str) -> None:
        self.selected_server = name

    def _on_choose(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.selected_server = change["new"]

    def _on_select(self, change: dict[str, Any]) -> None:
        for name in (change["old"], change["new"]):
            if name in self.tiles:
                self._paint(self.tiles[name], name, self.servers[name])
        if change["new"] in self._choose.options:
            self._choose.value = change["new"]
