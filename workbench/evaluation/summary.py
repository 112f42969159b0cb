"""The figures an evaluation report publishes, and the issue's targets checked against them.

Targets (on held-out servers and period, averaged over metrics and horizon steps):

* ``mase``: the TFT's MASE at most :data:`MASE_RATIO_TARGET` times the seasonal naive's;
* ``coverage``: the TFT's p10–p90 coverage within :data:`COVERAGE_TARGET`;
* ``recall_at_precision``: the product's alert rule (``calibrated`` when the bundle has an
  incident calibration, else ``band_edge``) recalls at least :data:`RECALL_TARGET` with precision
  at least :data:`PRECISION_TARGET` (warnings at least 30 min before onset);
* ``f1_vs_predict_linear``: that rule's F1 above the ``predict_linear`` rule's.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from workbench.evaluation.backtest import TFT, BacktestResult
from workbench.evaluation.warning import EarlyWarning

MASE_RATIO_TARGET = 0.65
COVERAGE_TARGET = (0.75, 0.85)
RECALL_TARGET = 0.8
PRECISION_TARGET = 0.7
WARNING_KEYS = ("recall", "precision", "f1", "median_lead_minutes", "false_alarms_per_server_day")
TARGET_TEXT = {
    "mase": f"TFT MASE <= {MASE_RATIO_TARGET} x seasonal naive",
    "coverage": f"p10-p90 coverage in [{COVERAGE_TARGET[0]}, {COVERAGE_TARGET[1]}]",
    "recall_at_precision": f"early-warning recall >= {RECALL_TARGET} at precision >= {PRECISION_TARGET}",
    "f1_vs_predict_linear": "early-warning F1 above the predict_linear rule's",
}


def _by_model(table: pl.DataFrame, column: str) -> dict[str, float | None]:
    return {row["model"]: row[column] for row in table.to_dicts()}


def targets_met(
    mase_ratio: float | None, coverage: float | None, warning: dict[str, dict[str, Any]], rule: str = "band_edge"
) -> dict[str, bool]:
    """Return whether each issue target (see the module docstring) is met; a missing figure fails.

    Args:
        mase_ratio: TFT MASE / seasonal-naive MASE.
        coverage: TFT p10–p90 coverage.
        warning: Early-warning figures per rule (``rule`` and ``predict_linear``).
        rule: The product's alert rule.
    """
    tft, linear = warning.get(rule, {}), warning.get("predict_linear", {})
    recall, precision = tft.get("recall"), tft.get("precision")
    f1, f1_linear = tft.get("f1"), linear.get("f1")
    return {
        "mase": mase_ratio is not None and mase_ratio <= MASE_RATIO_TARGET,
        "coverage": coverage is not None and COVERAGE_TARGET[0] <= coverage <= COVERAGE_TARGET[1],
        "recall_at_precision": recall is not None
        and precision is not None
        and recall >= RECALL_TARGET
        and precision >= PRECISION_TARGET,
        "f1_vs_predict_linear": f1 is not None and f1_linear is not None and f1 > f1_linear,
    }


def evaluation_metrics(result: BacktestResult, warning: EarlyWarning | None) -> dict[str, Any]:
    """Return every figure of the evaluation report, ready for :func:`workbench.reports.write_metrics`.

    Keys: ``mase_ratio_vs_seasonal_naive``; per model ``mase``, ``pinball`` (scaled by the
    seasonal-naive in-sample MAE, so metrics of different units can be averaged),
    ``pinball_raw_by_metric`` (in each metric's unit), ``coverage_p10_p90``; ``per_metric``
    (model → metric → scores); ``by_horizon`` (model → score → one value per step);
    ``early_warning`` (rule → recall, precision, f1, median_lead_minutes,
    false_alarms_per_server_day and the counts); ``lead_minutes`` (rule → leads of the hits);
    ``targets_met`` and ``missed_targets``; the run's ``servers``, ``origins`` and ``targets``.
    """
    overall = result.summary()
    per_metric = result.summary("metric")
    horizon = result.summary("horizon_step")
    warn = {} if warning is None else {row.pop("rule"): row for row in warning.summary.to_dicts()}
    coverage = _by_model(overall, "coverage")
    rule = result.rules[0] if result.rules else "band_edge"
    met = targets_met(result.mase_ratio(), coverage.get(TFT), warn, rule)
    metrics: dict[str, Any] = {
        "mase_ratio_vs_seasonal_naive": result.mase_ratio(),
        "mase": _by_model(overall, "mase"),
        "pinball": _by_model(overall, "scaled_pinball"),
        "coverage_p10_p90": coverage,
        "pinball_raw_by_metric": {
            m: {r["metric"]: r["pinball"] for r in per_metric.filter(pl.col("model") == m).to_dicts()}
            for m in result.board.models
        },
        "per_metric": {
            m: {
                r["metric"]: {k: r[k] for k in ("mase", "scaled_pinball", "coverage")}
                for r in per_metric.filter(pl.col("model") == m).to_dicts()
            }
            for m in result.board.models
        },
        "by_horizon": {
            m: {k: horizon.filter(pl.col("model") == m).sort("horizon_step")[k].to_list() for k in ("mase", "coverage")}
            for m in result.board.models
        },
        "early_warning": warn,
        "alert_rule": rule,
        "lead_minutes": {}
        if warning is None
        else {
            rule: warning.incidents.filter(pl.col("rule") == rule)["lead_minutes"].drop_nulls().to_list()
            for rule in warn
        },
        "targets_met": met,
        "missed_targets": [TARGET_TEXT[k] for k, ok in met.items() if not ok],
        "servers": len(result.servers),
        "origins": len(result.origins),
        "targets": list(result.targets),
    }
    return metrics
