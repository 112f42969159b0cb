"""Evaluation: forecast accuracy against baselines, early warning against ground truth, warm-up."""

from workbench.evaluation.backtest import BacktestConfig, BacktestResult, backtest
from workbench.evaluation.metrics import ScoreBoard, covered, mean_pinball, pinball_loss, seasonal_scale
from workbench.evaluation.summary import evaluation_metrics, targets_met
from workbench.evaluation.warmup import recommend_min_encoder_length, study_lengths, warmup_curve, warmup_origins
from workbench.evaluation.warning import EarlyWarning, Window, early_warning, episodes

__all__ = [
    "BacktestConfig",
    "BacktestResult",
    "EarlyWarning",
    "ScoreBoard",
    "Window",
    "backtest",
    "covered",
    "early_warning",
    "episodes",
    "evaluation_metrics",
    "mean_pinball",
    "pinball_loss",
    "recommend_min_encoder_length",
    "seasonal_scale",
    "study_lengths",
    "targets_met",
    "warmup_curve",
    "warmup_origins",
]
