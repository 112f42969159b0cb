"""Which network size pays for itself: accuracy against training and inference cost, measured.

For each candidate (hidden size × attention heads × LSTM layers) :func:`study_candidate` trains
a network to convergence on the same data and split, backtests it on the held-out servers and
period, and times the engine on a fleet of synthetic servers. :func:`choose_reference` picks
the cheapest candidate (engine time, then training time) whose held-out MASE is within
:data:`MASE_TOLERANCE` of the best one's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from workbench.evaluation.backtest import TFT, BacktestConfig, backtest
from workbench.inference.engine import Engine
from workbench.model.bundle import Bundle
from workbench.model.config import TrainConfig
from workbench.model.train import train
from workbench.simulator import generate
from workbench.splits import Holdout, split_frame

MASE_TOLERANCE = 0.02  # a candidate within 2 % of the best MASE counts as accurate enough


@dataclass(frozen=True)
class Candidate:
    """One network size of the study.

    Attributes:
        hidden_size: Width of the TFT.
        attention_head_size: Attention heads.
        lstm_layers: LSTM layers of the encoder and decoder.
    """

    hidden_size: int
    attention_head_size: int
    lstm_layers: int

    @property
    def name(self) -> str:
        """A short label, e.g. ``h16-a2-l1``."""
        return f"h{self.hidden_size}-a{self.attention_head_size}-l{self.lstm_layers}"

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """Read a label written by :attr:`name` (``h16-a2-l1``)."""
        try:
            h, a, layers = (int(part[1:]) for part in text.strip().split("-"))
        except ValueError as exc:
            raise ValueError(f"a candidate reads like h16-a2-l1 (hidden, heads, LSTM layers), got {text!r}") from exc
        return cls(h, a, layers)

    def config(self, base: TrainConfig) -> TrainConfig:
        """Return ``base`` with this candidate's size (the continuous embeddings at most as wide)."""
        return base.replace(
            hidden_size=self.hidden_size,
            attention_head_size=self.attention_head_size,
            lstm_layers=self.lstm_layers,
            hidden_continuous_size=min(base.hidden_continuous_size, self.hidden_size),
        )


def parse_grid(text: str) -> list[Candidate]:
    """Read a comma-separated list of candidate labels (``h8-a1-l1,h16-a2-l1``)."""
    return [Candidate.parse(part) for part in text.split(",") if part.strip()]


def engine_milliseconds(bundle: Bundle, servers: int, *, repeat: int = 3, seed: int = 0) -> float:
    """Return the best of ``repeat`` ``Engine.forecast`` times (ms) for ``servers`` full-history servers."""
    frame = generate(servers, (bundle.spec.max_encoder_length + 1) / 288, seed=seed)
    engine = Engine(bundle)
    engine.ingest(frame)
    engine.forecast()  # compiles the kernels on first use
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        engine.forecast()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def study_candidate(
    candidate: Candidate,
    frame: pl.DataFrame,
    holdout: Holdout,
    base: TrainConfig,
    *,
    backtest_config: BacktestConfig,
    engine_servers: int = 1000,
    progress: bool = False,
) -> tuple[dict[str, Any], Bundle]:
    """Train, backtest and time one candidate.

    Returns:
        The candidate's row (size, parameters, held-out MASE and its ratio to seasonal naive,
        p10–p90 coverage, training seconds, epochs, stop reason, windows/s, engine ms) and its bundle.
    """
    config = candidate.config(base)
    bundle = train(frame, config, holdout=holdout, progress=progress)
    test_frame = split_frame(frame, holdout)[1]
    result = backtest(
        bundle,
        test_frame,
        test_servers=list(holdout.test_servers),
        test_start=holdout.test_start,
        config=backtest_config,
    )
    overall = {row["model"]: row for row in result.summary().to_dicts()}
    t = bundle.training
    windows = t["epochs"] * t["sampler"]["batches_per_epoch_per_rank"] * t["sampler"]["batch_size"]
    row = {
        "candidate": candidate.name,
        "hidden_size": candidate.hidden_size,
        "attention_head_size": candidate.attention_head_size,
        "lstm_layers": candidate.lstm_layers,
        "parameters": sum(p.numel() for p in bundle.network.parameters()),
        "mase": overall[TFT]["mase"],
        "mase_ratio": result.mase_ratio(),
        "coverage": overall[TFT]["coverage"],
        "train_seconds": t["seconds"],
        "epochs": t["epochs"],
        "stopped_by": t["stopped_by"],
        "train_windows_per_s": windows / t["seconds"] if t["seconds"] else None,
        "engine_ms": engine_milliseconds(bundle, engine_servers),
    }
    return row, bundle


def choose_reference(rows: Sequence[dict[str, Any]], tolerance: float = MASE_TOLERANCE) -> dict[str, Any]:
    """Return the cheapest row (engine ms, then training seconds) whose MASE is within ``tolerance`` of the best."""
    best = min(r["mase"] for r in rows)
    accurate = [r for r in rows if r["mase"] <= best * (1 + tolerance)]
    return min(accurate, key=lambda r: (r["engine_ms"], r["train_seconds"]))
