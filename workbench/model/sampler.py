"""Which windows a training epoch draws, how often and on which rank; which ones validate.

An epoch is a fixed number of batches per rank. Its windows are drawn from a generator seeded
with ``(seed, epoch)``, the same on every rank, and each rank takes its own positions of the
draw, so the ranks of a DDP run split one draw between them (disjoint shards of its positions)
and any run can be repeated from its seed.
Draws are uniform over the valid windows, or weighted by a per-window array. History lengths are
shortened at random with pytorch-forecasting's ``randomize_length`` distribution (a
Beta(0.2, 0.05) draw of the share kept), drawn once per batch rather than per window: a batch of
equal lengths runs the LSTM without packing, 10-20x faster backward on CPU
(:mod:`workbench.model.training_speedups`), and each window is drawn with replacement among
those with enough history for its batch. Without randomised lengths, uniform draws take every
window once per pass and each window reads its longest history.
Validation windows are fixed and never re-weighted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import Sampler

from workbench import contract as c
from workbench.model.series import SeriesTable, WindowSet

RANDOMIZE_BETA = (0.2, 0.05)  # pytorch-forecasting's default for randomize_length=True
Draw = tuple[np.ndarray, np.ndarray]  # window positions and their encoder lengths


@dataclass(frozen=True)
class Weighting:
    """How training windows are weighted, and the record of it for ``training.json``.

    Attributes:
        weights: One weight per training window, or ``None`` for uniform draws.
        recipe: What the weights mean (kind, factor, counts), as plain JSON.
    """

    weights: np.ndarray | None
    recipe: dict[str, Any]


def uniform() -> Weighting:
    """Every valid window equally likely."""
    return Weighting(None, {"kind": "uniform"})


def incident_weighting(
    table: SeriesTable, windows: WindowSet, incidents: pl.DataFrame, factor: float, horizon: int
) -> Weighting:
    """Draw windows whose decoder holds an incident's precursor or onset ``factor`` times more often.

    Args:
        table: The data the windows index.
        windows: The training windows.
        incidents: Ground truth (:data:`workbench.simulator.GROUND_TRUTH_SCHEMA`): an incident
            counts from its precursor start to its onset (to its peak when the onset is unknown).
        factor: Weight of such a window; the others weigh 1.
        horizon: Decoder steps.
    """
    hot = np.zeros(len(table.values) + 1, np.int64)
    position = {name: i for i, name in enumerate(table.names)}
    step = (pl.col("precursor_start").dt.epoch("s") // c.STEP_SECONDS).alias("first")
    last = (pl.coalesce("onset", "peak").dt.epoch("s") // c.STEP_SECONDS).alias("last")
    used = 0
    for server, first, stop in incidents.select(c.SERVER, step, last).iter_rows():
        s = position.get(server)
        if s is None or first is None or stop is None:
            continue
        lo, hi = table.offsets[s], table.offsets[s + 1]
        a = int(np.clip(first - table.first_step[s] + lo, lo, hi))
        b = int(np.clip(stop - table.first_step[s] + lo + 1, lo, hi))
        if a < b:
            hot[a] += 1
            hot[b] -= 1
            used += 1
    covered = np.r_[0, np.cumsum(np.cumsum(hot[:-1]) > 0)]  # rows inside an incident, cumulated
    inside = covered[windows.decoder_start + horizon] - covered[windows.decoder_start] > 0
    weights = np.where(inside, float(factor), 1.0)
    share = float(weights[inside].sum() / weights.sum()) if len(weights) else 0.0
    recipe = {
        "kind": "incidents",
        "factor": float(factor),
        "rule": "decoder holds an incident's precursor or onset (precursor_start..onset)",
        "incidents": used,
        "windows_weighted": int(inside.sum()),
        "windows": len(windows),
        "expected_share_of_draws": round(share, 4),
    }
    return Weighting(weights, recipe)


class EpochSampler(Sampler[Draw]):
    """Yield each epoch's batches for this rank: window positions and encoder lengths."""

    def __init__(
        self,
        windows: WindowSet,
        *,
        batch_size: int,
        batches: int,
        min_encoder: int,
        randomize: bool,
        seed: int,
        weights: np.ndarray | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        """Create the sampler.

        Args:
            windows: The training windows.
            batch_size: Windows per batch.
            batches: Batches per epoch on each rank.
            min_encoder: Shortest history (the floor of randomised lengths).
            randomize: Shorten histories at random (else each window reads its longest).
            seed: Seed of the run; epoch ``e`` draws from ``(seed, e)``.
            weights: Per-window weights (``None``: uniform).
            rank: This process's rank (default: from ``torch.distributed`` when initialised).
            world_size: Number of ranks (default: likewise).
        """
        if len(windows) == 0:
            raise ValueError("no training window: the data is too short for min_encoder_length + horizon")
        self.windows = windows
        self.batch_size, self.batches = batch_size, batches
        self.min_encoder, self.randomize, self.seed = min_encoder, randomize, seed
        self.weights = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self._rank, self._world = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (Lightning calls this before each one)."""
        self.epoch = epoch

    def shard(self) -> tuple[int, int]:
        """Return ``(rank, world_size)``."""
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = self._rank if self._rank is not None else (torch.distributed.get_rank() if dist else 0)
        world = self._world if self._world is not None else (torch.distributed.get_world_size() if dist else 1)
        return rank, world

    def __len__(self) -> int:
        return self.batches

    def draw(self, epoch: int) -> Draw:
        """Return this rank's draw of an epoch: ``(batches * batch_size,)`` positions and lengths."""
        rank, world = self.shard()
        rng = np.random.default_rng([self.seed, epoch])
        batches = self.batches * world
        if self.randomize:
            picks, lengths = self._equal_length_batches(rng, batches)
        else:
            picks = self._picks(rng, batches * self.batch_size)
            lengths = self.windows.history[picks]
        # Batch b of rank r holds draws [(b * world + r) * batch_size, ... + batch_size).
        mine = np.arange(batches * self.batch_size).reshape(self.batches, world, self.batch_size)[:, rank].ravel()
        return picks[mine], lengths[mine].astype(np.int64)

    def _picks(self, rng: np.random.Generator, total: int) -> np.ndarray:
        n = len(self.windows)
        if self.weights is not None:
            return rng.choice(n, size=total, p=self.weights)
        return np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]

    def _equal_length_batches(self, rng: np.random.Generator, batches: int) -> Draw:
        """One history length per batch, drawn as ``randomize_length`` does; windows among those that have it.

        Equal lengths keep the LSTM unpacked (:mod:`workbench.model.training_speedups`). A window
        near the start of its series, with less history than the batch's length, is drawn only
        in batches short enough for it; windows are drawn with replacement, uniformly or by weight.
        """
        order = np.argsort(self.windows.history, kind="stable")
        history = self.windows.history[order]
        n, longest = len(order), int(history[-1])
        kept = rng.beta(*RANDOMIZE_BETA, size=batches)
        length = self.min_encoder + np.round((longest - self.min_encoder) * kept).astype(np.int64)
        first = np.searchsorted(history, length)[:, None]  # windows order[first:] have enough history
        u = rng.random((batches, self.batch_size))
        if self.weights is None:
            pos = first + (u * (n - first)).astype(np.int64)
        else:
            cum = np.r_[0.0, np.cumsum(self.weights[order])]
            target = cum[first] + u * (cum[n] - cum[first])
            pos = np.searchsorted(cum, target, side="right") - 1
        pos = np.clip(pos, first, n - 1)
        return order[pos.ravel()], np.repeat(length, self.batch_size)

    def __iter__(self) -> Iterator[Draw]:
        picks, lengths = self.draw(self.epoch)
        for b in range(self.batches):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield picks[part], lengths[part]


class FixedBatches(Sampler[Draw]):
    """Yield the same batches every time, in order, each of one history length (validation)."""

    def __init__(self, count: int, lengths: np.ndarray, batch_size: int) -> None:
        self.parts = []
        for length in np.unique(lengths[:count]):
            rows = np.flatnonzero(lengths[:count] == length)
            for lo in range(0, len(rows), batch_size):
                part = rows[lo : lo + batch_size]
                self.parts.append((part, lengths[part]))

    def __len__(self) -> int:
        return len(self.parts)

    def __iter__(self) -> Iterator[Draw]:
        return iter(self.parts)


def validation_windows(
    windows: WindowSet, *, min_encoder: int, max_encoder: int, count: int
) -> tuple[WindowSet, np.ndarray]:
    """Give each validation window ``count`` history lengths spread over the range, plus its longest.

    With ``count == 0`` every length from ``min_encoder`` to the window's longest is used.

    Returns:
        The windows, repeated once per length, and the lengths.
    """
    if count:
        grid = np.unique(np.linspace(min_encoder, max_encoder, count).round().astype(np.int64))
    else:
        grid = np.arange(min_encoder, max_encoder + 1)
    picks, lengths = [], []
    for i, longest in enumerate(windows.history):
        chosen = np.union1d(grid[grid < longest], [longest])
        picks.append(np.full(len(chosen), i))
        lengths.append(chosen)
    if not picks:
        return windows, np.zeros(0, np.int64)
    return windows.take(np.concatenate(picks)), np.concatenate(lengths).astype(np.int64)
