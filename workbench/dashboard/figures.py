"""Plotly ``FigureWidget`` help for pages that connect late (Voilà).

A ``FigureWidget`` sends its traces and layout as widget state only when it is built; every
later change travels as a one-off message, which a page not yet connected never receives,
and plotly sends nothing for a value that did not change. Voilà runs the notebook, and so
the first refreshes, before the page connects, so a figure would keep its build-time look
until its data next changed. Hence: build figures with all their traces, and once the first
view appears, blank the figure and draw it again, so every value travels to that view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go


def redraw_on_first_view(figure: go.FigureWidget, blank: Callable[[], None], draw: Callable[[], None]) -> None:
    """Call ``blank`` then ``draw`` when the first view of ``figure`` appears in a page.

    Args:
        figure: The figure (its ``_view_count`` is tracked from 0 by plotly).
        blank: Sets every value the figure shows to a placeholder, in one ``batch_update``.
        draw: Draws the figure's current data (also in one ``batch_update``).
    """

    def on_views(change: dict[str, Any]) -> None:
        if change["new"] and not change["old"]:
            blank()
            draw()

    figure.observe(on_views, "_view_count")
