"""A fleet's training data as contiguous arrays, its valid windows, and batches gathered from them.

:class:`SeriesTable` holds every server's targets on the step grid end to end (one float32 row
per step, carried forward over steps without a sample), so a batch of windows is a handful of
index computations and gathers, with no per-sample Python. A window is a server, the step its
8-hour decoder starts at and the length of the history before it; :func:`valid_windows` lists
those whose whole span lies inside one stretch of data without a gap longer than
:data:`workbench.contract.MAX_GAP_STEPS` (a longer gap restarts a server's history in the
inference engine, and the same holds here). :meth:`SeriesTable.batch` gives exactly the
tensors that ``TimeSeriesDataSet.__getitem__`` and its collate function give for the same
windows (held equal by a test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench import contract as c
from workbench.features import OBSERVED, TIME_IDX
from workbench.model.batch import assemble
from workbench.model.dataset import DatasetSpec


@dataclass(frozen=True)
class WindowSet:
    """A set of windows: parallel arrays, one entry per window.

    Attributes:
        series: Index of each window's server in the table.
        decoder_start: Row (in the table's ``values``) of the decoder's first step.
        history: Longest encoder each window can have (``<= max_encoder_length``).
    """

    series: np.ndarray
    decoder_start: np.ndarray
    history: np.ndarray

    def __len__(self) -> int:
        return len(self.series)

    def take(self, which: np.ndarray) -> WindowSet:
        """Return the windows at ``which`` (positions or a mask)."""
        return WindowSet(self.series[which], self.decoder_start[which], self.history[which])


@dataclass(frozen=True)
class SeriesTable:
    """Every server's targets on the step grid, end to end.

    Attributes:
        names: Server names, sorted; a server's position is its ``groups`` code.
        profile_codes: ``(S,)`` code of each server's profile in the network's embedding.
        offsets: ``(S + 1,)`` first row of each server in ``values`` (and the end).
        first_step: ``(S,)`` global step index of each server's first row.
        values: ``(N, M)`` float32 targets, in the spec's order.
        segment_start: ``(N,)`` first row of the gap-free stretch each row belongs to (-1: in
            a gap too long to carry forward).
        segment_end: ``(N,)`` one past the last row of that stretch.
    """

    names: tuple[str, ...]
    profile_codes: np.ndarray
    offsets: np.ndarray
    first_step: np.ndarray
    values: np.ndarray
    segment_start: np.ndarray
    segment_end: np.ndarray

    @classmethod
    def from_model_frame(
        cls, frame: pd.DataFrame, targets: tuple[str, ...], profile_labels: dict[str, int]
    ) -> SeriesTable:
        """Build the table from :func:`workbench.features.to_model_frame` output (one row per step).

        Args:
            frame: The model frame, sorted by server and step.
            targets: Target columns, in the network's order.
            profile_labels: Codes of the ``profile`` embedding (``hparams["embedding_labels"]``).
        """
        frame = frame.sort_values([c.SERVER, TIME_IDX], kind="stable")
        servers = frame[c.SERVER].to_numpy()
        starts = np.flatnonzero(np.r_[True, servers[1:] != servers[:-1]]) if len(servers) else np.zeros(0, int)
        offsets = np.r_[starts, len(servers)].astype(np.int64)
        steps = frame[TIME_IDX].to_numpy(np.int64)
        inside = np.ones(max(len(steps) - 1, 0), bool)
        inside[offsets[1:-1] - 1] = False
        if np.any(np.diff(steps)[inside] != 1):
            raise ValueError("the model frame must hold one row per server and step (see features.to_model_frame)")
        observed = frame[OBSERVED].to_numpy(bool) if OBSERVED in frame else np.ones(len(frame), bool)
        seg_start, seg_end = _segments(observed, offsets, c.MAX_GAP_STEPS)
        profiles = frame[c.PROFILE].to_numpy()[starts]
        return cls(
            names=tuple(str(s) for s in servers[starts]),
            profile_codes=np.array([profile_labels[str(p)] for p in profiles], dtype=np.int64),
            offsets=offsets,
            first_step=steps[starts],
            values=np.ascontiguousarray(frame[list(targets)].to_numpy(np.float64).astype(np.float32)),
            segment_start=seg_start,
            segment_end=seg_end,
        )

    def step_of(self, rows: np.ndarray, series: np.ndarray) -> np.ndarray:
        """Return the global step index of table rows of the given servers."""
        return self.first_step[series] + rows - self.offsets[series]

    def batch(
        self, windows: WindowSet, lengths: np.ndarray, spec: DatasetSpec, x_reals: list[str]
    ) -> tuple[dict[str, object], tuple[list[torch.Tensor] | torch.Tensor, None]]:
        """Gather a batch: the network's inputs and targets, as the dataset's collate gives them.

        Args:
            windows: The batch's windows.
            lengths: Encoder length of each (``min_encoder_length <= lengths <= history``).
            spec: The dataset spec.
            x_reals: The network's real inputs, in order.

        Returns:
            ``(x, (y, None))`` with ``x`` holding every key of ``TimeSeriesDataSet``'s collate
            (``encoder_target``, ``decoder_time_idx`` and ``groups`` included) and ``y`` the
            decoder targets (a list per target when there are several).
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        h = spec.horizon
        longest = int(lengths.max())
        first = windows.decoder_start - lengths
        rows = first[:, None] + np.arange(longest)[None, :]
        np.minimum(rows, windows.decoder_start[:, None] + h - 1, out=rows)  # padding rows: read, then zeroed
        mask = np.arange(longest)[None, :] < lengths[:, None]
        encoder = np.where(mask[..., None], self.values[rows], np.float32(0.0))
        decoder = self.values[windows.decoder_start[:, None] + np.arange(h)[None, :]]
        first_step = self.step_of(first, windows.series)
        parts = assemble(encoder, lengths, first_step, self.profile_codes[windows.series], spec, x_reals, decoder)
        x = parts.network_inputs(lengths)
        m = len(spec.targets)
        enc_targets = [torch.from_numpy(np.ascontiguousarray(encoder[..., j])) for j in range(m)]
        dec_targets = [torch.from_numpy(np.ascontiguousarray(decoder[..., j])) for j in range(m)]
        decoder_step = self.step_of(windows.decoder_start, windows.series)
        y: list[torch.Tensor] | torch.Tensor = dec_targets if m > 1 else dec_targets[0]
        x["encoder_target"] = enc_targets if m > 1 else enc_targets[0]
        x["decoder_target"] = y
        x["decoder_time_idx"] = torch.from_numpy(decoder_step[:, None] + np.arange(h)[None, :])
        x["groups"] = torch.from_numpy(windows.series.astype(np.int64)[:, None])
        return x, (y, None)


def valid_windows(
    table: SeriesTable,
    *,
    min_encoder: int,
    max_encoder: int,
    horizon: int,
    first_decoder_step: int | None = None,
    last_step: int | None = None,
) -> WindowSet:
    """List every window whose history and decoder lie inside one gap-free stretch of a server.

    Args:
        table: The data.
        min_encoder: Shortest history a window may have.
        max_encoder: Longest history a window reads (its ``history`` is capped here).
        horizon: Decoder steps.
        first_decoder_step: Only windows whose decoder starts at or after this global step.
        last_step: Only windows whose decoder ends at or before this global step.
    """
    n = len(table.values)
    series = np.repeat(np.arange(len(table.names)), np.diff(table.offsets))
    rows = np.arange(n)
    step = table.step_of(rows, series)
    seg_start = table.segment_start
    ok = (seg_start >= 0) & (rows + horizon <= table.segment_end) & (rows - seg_start >= min_encoder)
    if first_decoder_step is not None:
        ok &= step >= first_decoder_step
    if last_step is not None:
        ok &= step + horizon - 1 <= last_step
    picked = np.flatnonzero(ok)
    history = np.minimum(picked - seg_start[picked], max_encoder)
    return WindowSet(series[picked].astype(np.int64), picked.astype(np.int64), history.astype(np.int64))


def _segments(observed: np.ndarray, offsets: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's gap-free stretch ``[start, end)``, or ``-1`` for rows of a gap too long to fill.

    A stretch ends at a server's end or at a run of more than ``max_gap`` unobserved steps.
    """
    n = len(observed)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    boundary = np.zeros(n, bool)
    boundary[offsets[:-1]] = True
    # Runs of unobserved rows, per server: a run longer than max_gap is a break.
    change = np.flatnonzero(np.r_[True, (observed[1:] != observed[:-1]) | boundary[1:]])
    length = np.diff(np.r_[change, n])
    long_gap = ~observed[change] & (length > max_gap)
    marks = np.zeros(n + 1, np.int64)
    np.add.at(marks, change[long_gap], 1)
    np.add.at(marks, change[long_gap] + length[long_gap], -1)
    broken = np.cumsum(marks[:-1]) > 0
    # A new stretch begins at each server's start and at each row after a break.
    begins = (boundary | np.r_[False, broken[:-1]]) & ~broken
    label = np.cumsum(begins) - 1
    starts = np.flatnonzero(begins)
    # Each stretch ends at the next break, the next stretch or the server's end.
    stops = np.flatnonzero(np.r_[broken[1:] | begins[1:], True] & ~broken) + 1
    seg_start = np.where(broken, -1, starts[label])
    seg_end = np.where(broken, -1, stops[label])
    return seg_start.astype(np.int64), seg_end.astype(np.int64)
