"""Fit the incident calibration and the calibrated alert threshold on validation fleets.

:func:`fit_incidents` takes the warning features of one or more validation fleets (their
backtests at every step) and their ground truth, fits each window's
:class:`~workbench.early_warning.calibrator.WindowModel`, then picks the alert threshold ``τ``
of the calibrated rule: an alarm is active on a (server, metric) while its probability of an
incident within :data:`ALERT_WINDOW` is at least ``τ``; ``τ`` is the lowest value of
:data:`THRESHOLD_GRID` whose event-level precision on the validation fleets reaches the target
(default 0.7), so that recall is as high as that precision allows. Scoring is the backtest's
(:func:`workbench.evaluation.warning.early_warning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.early_warning.calibrator import WINDOW_STEPS, IncidentCalibration, fit_window
from workbench.early_warning.dataset import WarningSet
from workbench.errors import ConfigError
from workbench.evaluation.warning import ALARM_SCHEMA, Window, early_warning, empty_alarms

ALERT_WINDOW = "8h"
CALIBRATED_RULE = "calibrated"  # the label of its alarms, as the rule of workbench.alert_rules
TARGET_PRECISION = 0.7
THRESHOLD_GRID = tuple(float(t) for t in np.round(np.concatenate([np.arange(0.05, 0.95, 0.025), [0.95]]), 4))


@dataclass(frozen=True, eq=False)
class Fleet:
    """One validation or test fleet: warning features, ground truth and the evaluated window.

    Attributes:
        name: Label used in records and tables.
        warnings: Features of the backtest's early-warning origins.
        incidents: Ground truth.
        window: Where the rules were evaluated (the backtest's :class:`Window`).
        alarms: The backtest's alarm table of the other rules (band edge, ``predict_linear``, static).
    """

    name: str
    warnings: WarningSet
    incidents: pl.DataFrame
    window: Window
    alarms: pl.DataFrame = field(default_factory=empty_alarms)


def probabilities(warnings: WarningSet, calibration: IncidentCalibration, window: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(T, servers, metrics)`` metric and ``(T, servers)`` server probabilities of one window.

    They are what the daemon serves (:meth:`IncidentCalibration.predict`); servers without a
    forecast at an origin get NaN.
    """
    t, n, m, f = warnings.features.shape
    flat = warnings.features.reshape(t * n, m, f)
    k = list(WINDOW_STEPS).index(window)
    metrics, servers = calibration.predict(flat, warnings.metrics)
    metric, server = metrics[..., k].copy(), servers[:, k].copy()
    seen = ~np.isnan(flat).all(axis=(1, 2))
    metric[~seen], server[~seen] = np.nan, np.nan
    return metric.reshape(t, n, m), server.reshape(t, n)


def probability_alarms(warnings: WarningSet, metric_probability: np.ndarray, threshold: float) -> pl.DataFrame:
    """Return the calibrated rule's alarm table: rows where a metric's probability is ``>= threshold``."""
    kk, ii, jj = np.nonzero(np.nan_to_num(metric_probability, nan=0.0) >= threshold)
    return pl.DataFrame(
        {
            "rule": [CALIBRATED_RULE] * len(kk),
            c.SERVER: np.asarray(warnings.servers, dtype=object)[ii],
            "metric": np.asarray(warnings.metrics, dtype=object)[jj],
            "step": warnings.origins[kk],
        },
        schema=ALARM_SCHEMA,
    )


def threshold_curve(
    fleets: Sequence[Fleet], metric_probability: Sequence[np.ndarray], grid: Sequence[float] = THRESHOLD_GRID
) -> pl.DataFrame:
    """Return event-level recall, precision and F1 of the calibrated rule at every threshold of ``grid``.

    Counts are pooled over the fleets (hits over scored incidents, true over all episodes).
    """
    rows = []
    for tau in grid:
        totals = dict.fromkeys(("incidents", "hit", "true_episodes", "false_alarms"), 0)
        leads: list[float] = []
        for fleet, prob in zip(fleets, metric_probability, strict=True):
            alarms = probability_alarms(fleet.warnings, prob, tau)
            scored = early_warning(alarms, fleet.incidents, fleet.window, rules=[CALIBRATED_RULE])
            row = scored.rule(CALIBRATED_RULE)
            for key in totals:
                totals[key] += int(row[key] or 0)
            leads += scored.incidents.filter(pl.col("outcome") == "hit")["lead_minutes"].to_list()
        episodes = totals["true_episodes"] + totals["false_alarms"]
        recall = totals["hit"] / totals["incidents"] if totals["incidents"] else None
        precision = totals["true_episodes"] / episodes if episodes else None
        f1 = 2 * recall * precision / (recall + precision) if recall and precision else 0.0
        median = float(np.median(leads)) if leads else None
        rows.append({"threshold": tau, **totals, "recall": recall, "precision": precision, "f1": f1,
                     "median_lead_minutes": median})  # fmt: skip
    return pl.DataFrame(rows)


def pick_threshold(curve: pl.DataFrame, target_precision: float) -> tuple[float, str]:
    """Return the lowest threshold from which on precision stays at or above the target, and how.

    A threshold counts only when every higher threshold that still gives alarms reaches the
    target too: a single lucky dip of the curve is not a threshold to rely on on unseen
    servers. When none does, the most precise threshold is returned and the reason says so.
    """
    pts = curve.drop_nulls("precision").sort("threshold", descending=True)
    steady = pts.with_columns((pl.col("precision") >= target_precision).cum_min().alias("steady"))
    ok = steady.filter(pl.col("steady"))
    if ok.height:
        how = f"lowest threshold from which on validation precision stays >= {target_precision}"
        return float(ok["threshold"].to_numpy().min()), how
    best = curve.drop_nulls("precision").sort("precision", descending=True)
    if best.is_empty():
        raise ConfigError("no threshold gave a single alarm on the validation fleets")
    return float(best["threshold"][0]), f"no threshold reached precision {target_precision}: the most precise one"


def fit_incidents(fleets: Sequence[Fleet], *, target_precision: float = TARGET_PRECISION) -> IncidentCalibration:
    """Fit every window's model and the calibrated alert threshold on validation fleets.

    Args:
        fleets: Validation fleets (never the fleets the benchmark scores).
        target_precision: Event-level precision the alert threshold must reach.

    Raises:
        ConfigError: when the fleets hold no incident or no alarm-free example.
    """
    if not fleets:
        raise ConfigError("incident calibration needs at least one validation fleet")
    metrics = fleets[0].warnings.metrics
    windows, record = {}, {}
    for name, steps in WINDOW_STEPS.items():
        parts = [f.warnings.examples(f.warnings.labels(f.incidents, steps)) for f in fleets]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        windows[name] = fit_window(x, metrics, y, steps)
        record[name] = {"examples": int(x.shape[0]), "positive_metric_examples": int(y.sum())}
    calibration = IncidentCalibration(windows)
    probs = [probabilities(f.warnings, calibration, ALERT_WINDOW)[0] for f in fleets]
    curve = threshold_curve(fleets, probs)
    threshold, how = pick_threshold(curve, target_precision)
    chosen = curve.filter(pl.col("threshold") == threshold).to_dicts()[0]
    alert: dict[str, Any] = {
        "window": ALERT_WINDOW,
        "threshold": threshold,
        "target_precision": target_precision,
        "chosen_by": how,
        "validation": {k: chosen[k] for k in ("recall", "precision", "f1", "median_lead_minutes")},
        "validation_curve": curve.select("threshold", "recall", "precision", "f1").to_dicts(),
    }
    fleet_record = [
        {"name": f.name, "servers": len(f.window.servers), "server_days": round(f.window.server_days, 1),
         "incidents": int(f.incidents.height)} for f in fleets
    ]  # fmt: skip
    return IncidentCalibration(windows, alert=alert, record={"windows": record, "fleets": fleet_record})
