"""Contract frame -> model frame: the time index, known covariates and future rows.

The model sees the contract's metrics as targets, the profile as its only static input, and
calendar covariates that are known for any future step. ``state`` is never an input: it is the
simulator's ground truth and real telemetry does not carry it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import polars as pl

from workbench import contract as c
from workbench.errors import ContractError, Issue

TIME_IDX = "time_idx"
OBSERVED = "observed"  # whether a sample fell into the step (else the row is carried forward)
KNOWN_REALS: tuple[str, ...] = ("hour_sin", "hour_cos", "dow_sin", "dow_cos", "is_weekend")
_DAY_S = 86_400
_WEEK_S = 7 * _DAY_S
_EPOCH_MONDAY_OFFSET_S = 3 * _DAY_S  # 1970-01-01 was a Thursday


def time_index(epoch_seconds: np.ndarray) -> np.ndarray:
    """Return the global step index (steps since the epoch) of UTC epoch seconds."""
    return (np.asarray(epoch_seconds, dtype=np.int64) // c.STEP_SECONDS).astype(np.int64)


def known_covariates(time_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Return the calendar covariates of global step indices, all in [-1, 1] or {0, 1}.

    Args:
        time_idx: Global step indices, as from :func:`time_index`.
    """
    seconds = np.asarray(time_idx, dtype=np.int64) * c.STEP_SECONDS
    day_angle = 2 * np.pi * (seconds % _DAY_S) / _DAY_S
    week_pos = (seconds + _EPOCH_MONDAY_OFFSET_S) % _WEEK_S  # 0 = Monday 00:00 UTC
    week_angle = 2 * np.pi * week_pos / _WEEK_S
    return {
        "hour_sin": np.sin(day_angle),
        "hour_cos": np.cos(day_angle),
        "dow_sin": np.sin(week_angle),
        "dow_cos": np.cos(week_angle),
        "is_weekend": (week_pos >= 5 * _DAY_S).astype(np.float64),
    }


def to_model_frame(frame: pl.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Turn a validated contract frame into the pandas frame pytorch-forecasting consumes.

    Rows are bucketed onto the step grid (:func:`workbench.contract.to_grid`), sorted by server
    and time, with one row for every step from a server's first to its last observation: a
    step without a sample (column :data:`OBSERVED` false) and a missing target value are
    carried forward from the server's previous step, as the inference engine's windows read
    them, while the calendar covariates are those of the step itself.

    Args:
        frame: A frame returned by :func:`workbench.contract.validate`.
        targets: The model's target metrics.

    Raises:
        ContractError: when a server has no value at all for a target.
    """
    targets = c.check_metric_names(targets, what="target")
    ts = pl.col(c.TIMESTAMP).dt.epoch("s")
    observed = c.to_grid(frame).select(
        c.SERVER, c.PROFILE, *targets, (ts // c.STEP_SECONDS).alias(TIME_IDX), pl.lit(True).alias(OBSERVED)
    )
    steps = (
        observed.group_by(c.SERVER)
        .agg(pl.int_ranges(pl.col(TIME_IDX).min(), pl.col(TIME_IDX).max() + 1).alias(TIME_IDX))
        .explode(TIME_IDX)
    )
    data = (
        steps.join(observed, on=[c.SERVER, TIME_IDX], how="left")
        .sort(c.SERVER, TIME_IDX)
        .with_columns(pl.col(OBSERVED).fill_null(False))
        .with_columns(pl.col(x).forward_fill().over(c.SERVER) for x in (c.PROFILE, *targets))
        .select(c.SERVER, c.PROFILE, *targets, TIME_IDX, OBSERVED)
    )
    _check_targets_present(data, targets)
    pdf = data.to_pandas()
    for name, values in known_covariates(pdf[TIME_IDX].to_numpy()).items():
        pdf[name] = values
    pdf[c.PROFILE] = pdf[c.PROFILE].astype(str)
    return pdf


def _check_targets_present(data: pl.DataFrame, targets: Sequence[str]) -> None:
    # After the forward fill only a series' leading steps can be empty.
    issues = []
    for t in targets:
        for server, first in (
            data.filter(pl.col(t).is_null()).group_by(c.SERVER).agg(pl.col(TIME_IDX).min()).iter_rows()
        ):
            issues.append(Issue(None, t, None, f"server {server!r} has no {t} value at or before step {first}"))
    if issues:
        raise ContractError(issues)


def with_future(model_frame: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Append ``horizon`` future steps per server after its last observed step.

    pytorch-forecasting's ``predict=True`` uses the *last* ``horizon`` rows of each series as
    the decoder; fed only observed rows it would return a backcast. The future rows carry the
    known covariates and, as placeholders the network never sees, the last observed targets.

    Args:
        model_frame: Output of :func:`to_model_frame`.
        horizon: Number of future steps.
    """
    last = model_frame.groupby(c.SERVER, sort=False).tail(1)
    future = last.loc[last.index.repeat(horizon)].reset_index(drop=True)
    future[TIME_IDX] = future[TIME_IDX].to_numpy() + np.tile(np.arange(1, horizon + 1), len(last))
    for name, values in known_covariates(future[TIME_IDX].to_numpy()).items():
        future[name] = values
    out = pd.concat([model_frame, future], ignore_index=True)
    return out.sort_values([c.SERVER, TIME_IDX], kind="stable").reset_index(drop=True)
