"""Scores of probability forecasts of events: Brier, skill against climatology, ECE, reliability.

* **Brier score**: mean of ``(p - y)^2``.
* **Brier skill**: ``1 - Brier / Brier(climatology)``, where climatology forecasts the observed
  event rate of the scored examples themselves for every example (the hardest constant
  forecast to beat on that set); 0 = no better than the base rate, 1 = perfect.
* **Expected calibration error** (ECE): over :data:`BINS` equal-width bins of the predicted
  probability, the example-weighted mean of ``|mean predicted - observed rate|``.
* **Reliability table**: per non-empty bin, examples, mean predicted probability and observed
  rate (a reliability diagram plots the second against the first).
"""

from __future__ import annotations

import numpy as np
import polars as pl

BINS = 10


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Return the mean squared difference between probabilities and 0/1 outcomes."""
    p, y = _flat(p, y)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def brier_skill(p: np.ndarray, y: np.ndarray) -> float:
    """Return ``1 - brier(p) / brier(climatology)``; NaN when the outcomes never vary."""
    p, y = _flat(p, y)
    rate = y.mean() if y.size else 0.0
    reference = rate * (1.0 - rate)
    return float(1.0 - brier(p, y) / reference) if reference > 0 else float("nan")


def reliability(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> pl.DataFrame:
    """Return ``bin_low, bin_high, examples, predicted, observed`` per non-empty bin."""
    p, y = _flat(p, y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    total_p = np.bincount(which, weights=p, minlength=bins)
    total_y = np.bincount(which, weights=y, minlength=bins)
    keep = count > 0
    return pl.DataFrame(
        {
            "bin_low": edges[:-1][keep],
            "bin_high": edges[1:][keep],
            "examples": count[keep],
            "predicted": total_p[keep] / count[keep],
            "observed": total_y[keep] / count[keep],
        }
    )


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Return the example-weighted mean gap between predicted and observed rate over the bins."""
    table = reliability(p, y, bins)
    if table.is_empty():
        return float("nan")
    gap = np.abs(table["predicted"].to_numpy() - table["observed"].to_numpy())
    weight = table["examples"].to_numpy()
    return float((gap * weight).sum() / weight.sum())


def probability_scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Return examples, event rate, mean probability, Brier, Brier skill and ECE in one dict."""
    flat_p, flat_y = _flat(p, y)
    return {
        "examples": int(flat_p.size),
        "event_rate": float(flat_y.mean()) if flat_y.size else float("nan"),
        "mean_probability": float(flat_p.mean()) if flat_p.size else float("nan"),
        "brier": brier(flat_p, flat_y),
        "brier_climatology": float(flat_y.mean() * (1 - flat_y.mean())) if flat_y.size else float("nan"),
        "brier_skill": brier_skill(flat_p, flat_y),
        "ece": expected_calibration_error(flat_p, flat_y),
    }


def _flat(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and drop pairs where either side is NaN."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    keep = np.isfinite(p) & np.isfinite(y)
    return p[keep], y[keep]
