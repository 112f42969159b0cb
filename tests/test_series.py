"""The vectorised training batches equal pytorch-forecasting's ``TimeSeriesDataSet`` + collate, tensor by tensor."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from workbench import contract as c
from workbench.features import OBSERVED, TIME_IDX, to_model_frame
from workbench.model import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.network import network_from_dataset
from workbench.model.series import SeriesTable, valid_windows
from workbench.simulator import generate

TARGETS = ("cpu_pct", "mem_pct", "latency_ms", "error_rate")


def _with_gaps(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Drop single samples and short runs everywhere, one long outage, and a late-starting server."""
    rng = np.random.default_rng(seed)
    keep = rng.random(frame.height) > 0.03
    names = frame[c.SERVER].unique().sort().to_list()
    step = (frame[c.TIMESTAMP].dt.epoch("s") // c.STEP_SECONDS).to_numpy()
    step = step - step.min()
    server = frame[c.SERVER].to_numpy()
    keep &= ~((server == names[0]) & (step >= 200) & (step < 230))  # 30 steps: longer than MAX_GAP_STEPS
    keep &= ~((server == names[1]) & (step < 150))  # joins the fleet late
    keep |= np.isin(server, names[2:4]) & (step >= 290) & (step < 420)  # no random drop beside the two below
    keep &= ~((server == names[2]) & (step >= 300) & (step < 300 + c.MAX_GAP_STEPS))  # the longest filled gap
    keep &= ~((server == names[3]) & (step >= 400) & (step <= 400 + c.MAX_GAP_STEPS))  # one step too long
    return frame.filter(pl.Series(keep))


@pytest.fixture(scope="module")
def setup():
    frame = _with_gaps(generate(9, 3.0, seed=5), seed=1)
    config = TrainConfig.preset("tiny", targets=TARGETS, max_encoder_length=60, min_encoder_length=10)
    model_frame = to_model_frame(frame, config.targets)
    cutoff = int(model_frame[TIME_IDX].max()) - config.validation_steps
    spec = DatasetSpec.fit(model_frame[model_frame[TIME_IDX] <= cutoff], config)
    train_ds = spec.build(model_frame[model_frame[TIME_IDX] <= cutoff])
    val_ds = spec.build(model_frame, min_prediction_idx=cutoff + 1)
    hparams = network_from_dataset(train_ds, config, spec).hparams
    table = SeriesTable.from_model_frame(model_frame, spec.targets, dict(hparams["embedding_labels"][c.PROFILE]))
    return spec, train_ds, val_ds, hparams, table, model_frame.sort_values([c.SERVER, TIME_IDX]).reset_index(drop=True)


def _rows(dataset, count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)


def _assert_equal(ours, theirs, where: str) -> None:
    if isinstance(theirs, list | tuple):
        assert isinstance(ours, list | tuple) and len(ours) == len(theirs), where
        for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _assert_equal(a, b, f"{where}[{k}]")
        return
    if theirs is None:
        assert ours is None, where
        return
    assert ours.shape == theirs.shape, f"{where}: {tuple(ours.shape)} != {tuple(theirs.shape)}"
    assert ours.dtype == theirs.dtype, f"{where}: {ours.dtype} != {theirs.dtype}"
    diff = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
    assert diff <= 1e-6, f"{where}: max abs diff {diff}"


@pytest.mark.parametrize("which", ["train", "validation"])
def test_batches_equal_timeseriesdataset_and_its_collate(setup, which):
    spec, train_ds, val_ds, hparams, table, _ = setup
    dataset = train_ds if which == "train" else val_ds
    rows = _rows(dataset, 160, np.random.default_rng(0 if which == "train" else 1))
    index = dataset.index.iloc[rows]
    # Map the dataset's rows to the table's: its group codes are the servers' sorted positions.
    group = dataset.data["groups"][:, 0].numpy()
    table_row = table.offsets[group] + dataset.data["time"].numpy() - table.first_step[group]
    assert np.array_equal(table.values[table_row], torch.stack(dataset.data["target"], 1).numpy())
    lengths = index["sequence_length"].to_numpy() - spec.horizon
    starts = table_row[index["index_start"].to_numpy()] + lengths
    assert len(np.unique(lengths)) > (1 if which == "train" else 10)
    for part in np.array_split(np.arange(len(rows)), 4):
        theirs = dataset._collate_fn([dataset[int(i)] for i in rows[part]])
        windows = _window_set(table, starts[part])
        ours = table.batch(windows, lengths[part], spec, list(hparams["x_reals"]))
        assert set(ours[0]) == set(theirs[0])
        for key in theirs[0]:
            _assert_equal(ours[0][key], theirs[0][key], key)
        _assert_equal(ours[1][0], theirs[1][0], "y")
        assert ours[1][1] is None and theirs[1][1] is None


def _series(table: SeriesTable) -> np.ndarray:
    return np.repeat(np.arange(len(table.names)), np.diff(table.offsets))


def _window_set(table: SeriesTable, decoder_start: np.ndarray):
    from workbench.model.series import WindowSet

    series = _series(table)[decoder_start]
    return WindowSet(series, decoder_start, np.zeros_like(decoder_start))


def test_valid_windows_are_those_inside_one_stretch_without_a_long_gap(setup):
    spec, _, _, _, table, model_frame = setup
    windows = valid_windows(table, min_encoder=spec.min_encoder_length, max_encoder=60, horizon=spec.horizon)
    expected = _brute_force_windows(model_frame, spec.min_encoder_length, 60, spec.horizon)
    got = set(zip(windows.decoder_start.tolist(), windows.history.tolist(), strict=True))
    assert got == expected
    # The outage splits the first server's history; a gap of exactly MAX_GAP_STEPS is spanned.
    observed = model_frame[OBSERVED].to_numpy()
    spans_outage = [d for d, n in got if not observed[d - n : d + spec.horizon].all()]
    assert spans_outage and all(
        _longest_false_run(observed[d - n : d + spec.horizon]) <= c.MAX_GAP_STEPS for d, n in got
    )
    assert any(_longest_false_run(observed[d - n : d + spec.horizon]) == c.MAX_GAP_STEPS for d, n in got)


def _brute_force_windows(model_frame, min_encoder: int, max_encoder: int, horizon: int) -> set[tuple[int, int]]:
    observed = model_frame[OBSERVED].to_numpy()
    servers = model_frame[c.SERVER].to_numpy()
    forbidden = np.zeros(len(observed), bool)
    i = 0
    while i < len(observed):  # a run of missing steps longer than MAX_GAP_STEPS is forbidden, whole
        j = i
        while j < len(observed) and not observed[j] and servers[j] == servers[i]:
            j += 1
        if j - i > c.MAX_GAP_STEPS:
            forbidden[i:j] = True
        i = max(j, i + 1)
    out = set()
    for d in range(len(observed)):
        end = d + horizon
        if end > len(observed) or servers[end - 1] != servers[d] or forbidden[d:end].any():
            continue
        n = 0
        while n < max_encoder and d - n - 1 >= 0 and servers[d - n - 1] == servers[d] and not forbidden[d - n - 1]:
            n += 1
        if n >= min_encoder:
            out.add((d, n))
    return out


def _longest_false_run(mask: np.ndarray) -> int:
    longest = run = 0
    for value in mask:
        run = 0 if value else run + 1
        longest = max(longest, run)
    return longest
