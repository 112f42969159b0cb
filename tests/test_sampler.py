"""Epoch draws: in proportion to weights, disjoint across ranks, repeatable from the seed, one length per batch."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from scipy import stats

from workbench import contract as c
from workbench.features import to_model_frame
from workbench.model.sampler import EpochSampler, FixedBatches, incident_weighting
from workbench.model.series import SeriesTable, WindowSet, valid_windows


def _windows(histories: np.ndarray) -> WindowSet:
    n = len(histories)
    return WindowSet(np.zeros(n, np.int64), np.arange(n, dtype=np.int64) + 500, np.asarray(histories, np.int64))


@pytest.mark.parametrize("randomize", [False, True])
def test_weighted_draws_are_in_proportion_to_the_weights(randomize):
    rng = np.random.default_rng(0)
    weights = rng.choice([1.0, 5.0], size=40)
    sampler = EpochSampler(
        _windows(np.full(40, 48)),
        batch_size=50,
        batches=200,
        min_encoder=12,
        randomize=randomize,
        seed=7,
        weights=weights,
    )
    picks, _ = sampler.draw(0)
    counts = np.bincount(picks, minlength=40)
    expected = weights / weights.sum() * len(picks)
    chi2, p = stats.chisquare(counts, expected)
    assert p > 0.01, f"chi2 {chi2:.1f}, p {p:.4f}"
    heavy, light = counts[weights == 5].mean(), counts[weights == 1].mean()
    assert 4.0 < heavy / light < 6.0


def test_uniform_draws_cover_every_window_once_before_repeating():
    sampler = EpochSampler(_windows(np.full(30, 48)), batch_size=10, batches=3, min_encoder=12, randomize=False, seed=1)
    picks, lengths = sampler.draw(0)
    assert sorted(picks) == list(range(30)) and (lengths == 48).all()


def test_ranks_draw_disjoint_shards_and_the_same_seed_gives_the_same_epoch():
    windows = _windows(np.full(1000, 48))
    kw = {"batch_size": 16, "batches": 10, "min_encoder": 12, "randomize": True, "seed": 3}
    shards = [EpochSampler(windows, rank=r, world_size=3, **kw).draw(2)[0] for r in range(3)]
    positions = np.concatenate(shards)
    assert len(positions) == 3 * 160 and len(set(positions.tolist())) > 0.8 * len(positions)
    whole = EpochSampler(windows, rank=0, world_size=1, **kw | {"batches": 30}).draw(2)
    assert sorted(positions.tolist()) == sorted(whole[0].tolist())  # the shards partition one draw
    again = EpochSampler(windows, rank=1, world_size=3, **kw).draw(2)[0]
    assert np.array_equal(again, shards[1])
    assert not np.array_equal(EpochSampler(windows, rank=1, world_size=3, **kw).draw(3)[0], shards[1])


def test_each_batch_has_one_history_length_within_every_windows_history():
    histories = np.r_[np.full(900, 48), np.arange(12, 48).repeat(3)]
    sampler = EpochSampler(_windows(histories), batch_size=32, batches=200, min_encoder=12, randomize=True, seed=0)
    batches = list(sampler)
    assert len(batches) == 200
    lengths = np.array([b[1][0] for b in batches])
    assert all(len(set(b[1].tolist())) == 1 for b in batches)
    assert all((histories[b[0]] >= b[1]).all() for b in batches)
    assert (lengths == 48).mean() > 0.5 and (lengths < 30).any()  # Beta(0.2, 0.05): mostly the longest
    drawn_short = np.isin(np.concatenate([b[0] for b in batches]), np.arange(900, len(histories)))
    assert drawn_short.any()


def test_validation_batches_hold_one_length_each():
    lengths = np.array([12, 48, 12, 30, 48, 48, 30, 12])
    parts = list(FixedBatches(len(lengths), lengths, batch_size=2))
    assert sorted(np.concatenate([p[0] for p in parts]).tolist()) == list(range(8))
    assert all(len(set(lengths[p[0]].tolist())) == 1 and np.array_equal(lengths[p[0]], p[1]) for p in parts)


def test_incident_weighting_marks_windows_whose_decoder_holds_a_precursor_or_onset(tiny_fleet):
    frame = to_model_frame(tiny_fleet, ("cpu_pct",))
    table = SeriesTable.from_model_frame(frame, ("cpu_pct",), {p: i for i, p in enumerate(c.PROFILES)})
    windows = valid_windows(table, min_encoder=12, max_encoder=48, horizon=96)
    server = table.names[2]
    start = table.first_step[2] + 300
    to_time = lambda step: datetime.fromtimestamp(int(step) * c.STEP_SECONDS, UTC)  # noqa: E731
    incidents = pl.DataFrame(
        {
            c.SERVER: [server],
            "precursor_start": [to_time(start)],
            "onset": [to_time(start + 20)],
            "peak": [to_time(start + 40)],
        }
    ).with_columns(pl.col("precursor_start", "onset", "peak").cast(pl.Datetime("us", "UTC")))
    weighting = incident_weighting(table, windows, incidents, factor=4.0, horizon=96)
    assert weighting.recipe["kind"] == "incidents" and weighting.recipe["incidents"] == 1
    hot = weighting.weights == 4.0
    decoder_first = table.step_of(windows.decoder_start, windows.series)
    expected = (windows.series == 2) & (decoder_first <= start + 20) & (decoder_first + 95 >= start)
    assert np.array_equal(hot, expected) and hot.sum() == weighting.recipe["windows_weighted"] == 96 + 20
