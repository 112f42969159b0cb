"""The bundle's drift reference: its training inputs' bounds and its accuracy on the validation period.

The daemon judges drift against what the model did on data it was not fitted on: this replays
the bundle's validation period step by step through the engine and scores the forecasts exactly
as :class:`~workbench.drift.DriftMonitor` scores them live (plain averages instead of decayed
ones), and fits the input bounds on the training period. The result is the bundle's
``drift.json``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from workbench import contract as c
from workbench.drift import DriftMonitor, DriftReference, InputReference
from workbench.errors import ConfigError
from workbench.inference.engine import Engine
from workbench.inference.window import WindowStore
from workbench.model.bundle import Bundle

DEFAULT_MAX_SERVERS = 200
DEFAULT_MAX_STEPS = 3 * 288  # three days of validation are plenty of scores


def fit_drift_reference(
    bundle: Bundle,
    frame: pl.DataFrame,
    *,
    max_servers: int = DEFAULT_MAX_SERVERS,
    max_steps: int = DEFAULT_MAX_STEPS,
    progress: bool = True,
) -> DriftReference:
    """Fit the input bounds on the training period and score the validation period.

    Args:
        bundle: The trained bundle (``training.json`` says where validation starts).
        frame: The contract frame it was trained on (or one like it).
        max_servers: Servers replayed (an even spread of the fleet's names).
        max_steps: Validation steps replayed at most.
        progress: Show a progress bar.

    Raises:
        ConfigError: when the data holds no training or no validation period.
    """
    targets = tuple(bundle.spec.targets)
    start = _validation_start(bundle, frame)
    training = frame.filter(pl.col(c.TIMESTAMP) < start)
    if training.is_empty():
        raise ConfigError(f"the data holds nothing before the validation start {start.isoformat()}")
    servers = _spread(sorted(frame[c.SERVER].unique().to_list()), max_servers)
    warm = start - timedelta(seconds=bundle.spec.max_encoder_length * c.STEP_SECONDS)
    end = start + timedelta(seconds=max_steps * c.STEP_SECONDS)
    replay = frame.filter(
        pl.col(c.SERVER).is_in(servers) & (pl.col(c.TIMESTAMP) >= warm) & (pl.col(c.TIMESTAMP) < end)
    ).sort(c.TIMESTAMP)
    if replay.filter(pl.col(c.TIMESTAMP) >= start).is_empty():
        raise ConfigError(f"the data holds nothing from the validation start {start.isoformat()} on")
    engine = Engine(bundle)
    store = WindowStore(bundle.spec.max_encoder_length, targets)
    monitor = DriftMonitor(targets, half_life_steps=math.inf)
    for step in tqdm(
        replay.partition_by(c.TIMESTAMP, maintain_order=True), desc="validation replay", disable=not progress
    ):
        store.ingest(step)
        if step[c.TIMESTAMP][0] >= start:
            monitor.observe(engine.forecast(store=store), store)
    return DriftReference(InputReference.fit(training, targets), monitor.report()["accuracy"])


def _validation_start(bundle: Bundle, frame: pl.DataFrame) -> datetime:
    recorded = bundle.training.get("validation_start")
    if recorded:
        return datetime.fromisoformat(recorded)
    steps = int(bundle.config.validation_steps)
    last: datetime = frame[c.TIMESTAMP].max()  # type: ignore[assignment]
    return last - timedelta(seconds=(steps - 1) * c.STEP_SECONDS)


def _spread(names: list[str], most: int) -> list[str]:
    if len(names) <= most:
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, most).round().astype(int)]
