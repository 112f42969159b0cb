"""Warm-up study: forecast accuracy as a function of the history the engine has.

At each origin, every server's window is truncated to ``L`` steps and the network forecasts
from that shorter history (the engine would report ``warming_up`` below the bundle's
``min_encoder_length``; here the window is cut on purpose, to measure what that costs). The
scores are those of :mod:`workbench.evaluation.metrics`, on the same actual values and MASE
scales for every ``L``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from workbench import contract as c
from workbench.baselines import SEASON_STEPS, panel_from_frame, step_of
from workbench.errors import ConfigError
from workbench.evaluation.backtest import HistoryFeeder
from workbench.evaluation.metrics import ScoreBoard, seasonal_scale
from workbench.forecast import postprocess
from workbench.inference.engine import Engine
from workbench.model.bundle import Bundle

DEFAULT_LENGTHS = (12, 24, 36, 48, 72, 96, 144, 288)
TOLERANCE = 0.10


def study_lengths(bundle: Bundle, lengths: Sequence[int] = DEFAULT_LENGTHS) -> list[int]:
    """Return the history lengths worth studying for ``bundle``: those up to its longest encoder, plus it."""
    longest = bundle.spec.max_encoder_length
    return sorted({int(n) for n in lengths if 1 <= n <= longest} | {longest})


def warmup_origins(frame: pl.DataFrame, bundle: Bundle, *, start: datetime, count: int, stride: int) -> list[int]:
    """Return up to ``count`` origins ``stride`` steps apart, latest first, for :func:`warmup_curve`.

    Each origin lies at or after ``start`` minus one step, has a full horizon of data after it
    and the bundle's longest encoder of history before it.

    Args:
        frame: Contract rows.
        bundle: The model (horizon and longest encoder).
        start: Earliest forecast time (e.g. the held-out period's start).
        count: Most origins.
        stride: Steps between origins.
    """
    if count < 1 or stride < 1:
        raise ConfigError(f"need count >= 1 and stride >= 1, got {count} and {stride}")
    steps = frame[c.TIMESTAMP].dt.epoch("s") // c.STEP_SECONDS
    first, last = int(steps.min()), int(steps.max())  # type: ignore[arg-type]
    lowest = max(step_of(start) - 1, first + bundle.spec.max_encoder_length - 1)
    top = last - bundle.spec.horizon
    return sorted(o for o in range(top, lowest - 1, -stride)[:count])


def warmup_curve(
    bundle: Bundle,
    frame: pl.DataFrame,
    *,
    servers: Sequence[str],
    origins: Sequence[int],
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    progress: bool = True,
) -> pl.DataFrame:
    """Return mean scores per history length: ``history_steps, pinball, scaled_pinball, mase, coverage, n``.

    Args:
        bundle: The model.
        frame: Contract rows of ``servers`` on the step grid, with enough history before the
            first origin (the longest length studied) and a full horizon after the last.
        servers: Servers to forecast.
        origins: Forecast origins (global step indices of the last observation).
        lengths: History lengths to study (see :func:`study_lengths`).
        progress: Show a tqdm progress bar.
    """
    lengths = study_lengths(bundle, lengths)
    data = c.to_grid(frame.filter(pl.col(c.SERVER).is_in(list(servers))))
    targets, horizon = bundle.spec.targets, bundle.spec.horizon
    panel = panel_from_frame(data, targets)
    actual = panel_from_frame(data, targets, fill=False).values
    offset = panel.last_step - actual.shape[1] + 1
    if not origins or min(origins) - offset < max(lengths) - 1 or max(origins) + horizon > panel.last_step:
        raise ConfigError(f"origins need {max(lengths)} steps of history before them and {horizon} after")
    engine = Engine(bundle)
    feeder, board = HistoryFeeder(engine, data), ScoreBoard(targets, horizon)
    for origin in tqdm(sorted(origins), desc="warm-up", disable=not progress):
        feeder.forecast_at(origin, list(panel.servers))  # feeds the windows; its own forecast is unused
        names = [s for s in panel.servers if engine.store.history(s) >= max(lengths)]
        rows = [panel.servers.index(s) for s in names]
        start = origin + 1 - offset
        truth = actual[rows, start : start + horizon].transpose(0, 2, 1)
        scale = seasonal_scale(panel.until(origin, SEASON_STEPS * 3).values[rows])
        for length in lengths:
            windows = engine.store.windows(names, length)
            quantiles = postprocess(engine.predict(windows), targets)
            board.add(str(length), truth, quantiles, scale)
    table = board.summary("model")
    return table.with_columns(pl.col("model").cast(pl.Int64).alias("history_steps")).drop("model")


def recommend_min_encoder_length(curve: pl.DataFrame, tolerance: float = TOLERANCE) -> int:
    """Return the shortest history whose MASE is within ``tolerance`` of the longest history's.

    Rule: ``mase(L) <= (1 + tolerance) * mase(L_max)``; the smallest such ``L`` is recommended.

    Args:
        curve: Output of :func:`warmup_curve`.
        tolerance: Allowed relative excess of MASE over the full-history MASE.
    """
    ordered = curve.sort("history_steps")
    mase = ordered["mase"].to_numpy().astype(np.float64)
    steps = ordered["history_steps"].to_list()
    full = mase[-1]
    if not np.isfinite(full):
        return int(steps[-1])
    ok = np.nonzero(mase <= (1 + tolerance) * full)[0]
    return int(steps[ok[0]])
