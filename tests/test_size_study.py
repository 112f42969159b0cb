"""The size study's grid, per-candidate settings and the rule that picks the reference network."""

from __future__ import annotations

import pytest

from workbench.evaluation.size_study import Candidate, choose_reference, parse_grid
from workbench.model import TrainConfig


def test_grid_labels_round_trip_and_bad_ones_are_named():
    grid = parse_grid("h8-a1-l1, h16-a2-l2")
    assert grid == [Candidate(8, 1, 1), Candidate(16, 2, 2)]
    assert [c.name for c in grid] == ["h8-a1-l1", "h16-a2-l2"]
    with pytest.raises(ValueError, match="h16-a2-l1"):
        parse_grid("h16-a2")


def test_a_candidate_changes_only_the_size_and_keeps_embeddings_no_wider_than_the_network():
    base = TrainConfig.preset("reference")
    config = Candidate(4, 1, 2).config(base)
    assert (config.hidden_size, config.attention_head_size, config.lstm_layers) == (4, 1, 2)
    assert config.hidden_continuous_size == min(base.hidden_continuous_size, 4)
    assert config.replace(hidden_size=base.hidden_size, attention_head_size=base.attention_head_size) == base.replace(
        lstm_layers=2, hidden_continuous_size=config.hidden_continuous_size
    )


def test_the_cheapest_candidate_within_the_tolerance_of_the_best_is_chosen():
    rows = [
        {"candidate": "big", "mase": 0.800, "engine_ms": 900.0, "train_seconds": 900.0},
        {"candidate": "mid", "mase": 0.812, "engine_ms": 400.0, "train_seconds": 500.0},
        {"candidate": "tiny", "mase": 0.900, "engine_ms": 100.0, "train_seconds": 100.0},
        {"candidate": "mid-slow", "mase": 0.805, "engine_ms": 400.0, "train_seconds": 800.0},
    ]
    assert choose_reference(rows, 0.02)["candidate"] == "mid"
    assert choose_reference(rows, 0.01)["candidate"] == "mid-slow"
    assert choose_reference(rows, 0.2)["candidate"] == "tiny"
