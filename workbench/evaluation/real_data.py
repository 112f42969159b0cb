"""Rolling-origin scores of a TFT on real held-out servers, next to the baselines, for busy and idle servers.

Notebook ``07_real_data`` reads these figures. At each scored origin the engine holds exactly
the test servers' history up to it (as in :mod:`workbench.evaluation.backtest`); the baselines,
MSTL + AutoETS included, see the last ``history_steps`` of the same history, and every model
forecasts the next 96 steps. Only servers every model forecast at an origin are scored there.
Scores (:mod:`workbench.evaluation.metrics`) are kept for all test servers and separately for
the busy ones (mean CPU above a quantile of the whole fleet's, before the test period) and the
idle rest. ``p50_variation`` says how much each model's median moves over the horizon: the
median over series and origins of ``std(p50) / std(actual)``; near 0 is a flat median.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from workbench import contract as c
from workbench.baselines import (
    BASELINES,
    DEFAULT_BASELINES,
    MSTL_NAME,
    RESIDUAL_ORIGINS,
    WEEK_STEPS,
    Panel,
    step_of,
)
from workbench.errors import ConfigError
from workbench.evaluation.backtest import TFT, HistoryFeeder, scored_panels
from workbench.evaluation.metrics import ScoreBoard, seasonal_scale
from workbench.evaluation.summary import COVERAGE_TARGET
from workbench.forecast import Forecast
from workbench.inference.engine import Engine
from workbench.model.bundle import Bundle

BUSY_METRIC = "cpu_pct"
GROUPS = ("all", "busy", "idle")
REAL_BASELINES: tuple[str, ...] = (*DEFAULT_BASELINES, "daily_median", MSTL_NAME)
MASE_RATIO_TARGET = 0.85
BUSY_MASE_RATIO_TARGET = 1.0


@dataclass(frozen=True)
class RealDataConfig:
    """Settings of the real-data scoring.

    Attributes:
        origins: Scored origins, spread evenly over the test period's grid of ``origin_stride``
            steps; 0 scores every origin of the grid.
        origin_stride: Steps between the origins of the grid.
        history_steps: Steps of history the baselines see (two weeks: MSTL's weekly season needs them).
        residual_origins: Origins whose in-sample residuals give the rules' bands.
        baselines: Baselines scored next to the TFT (names of :data:`workbench.baselines.BASELINES`).
        progress: Show a progress bar.
    """

    origins: int = 6
    origin_stride: int = 36
    history_steps: int = 2 * WEEK_STEPS
    residual_origins: int = RESIDUAL_ORIGINS
    baselines: tuple[str, ...] = REAL_BASELINES
    progress: bool = True

    def __post_init__(self) -> None:
        if self.origins < 0 or self.origin_stride < 1:
            raise ConfigError(f"need origins >= 0 and origin_stride >= 1, got {self.origins}, {self.origin_stride}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; allowed: {', '.join(BASELINES)}")


@dataclass
class RealScores:
    """What :func:`score_real` measured.

    Attributes:
        boards: Accumulated scores per group (``all``, ``busy``, ``idle``).
        origins: Scored origins (global step indices).
        servers: Test servers.
        busy: The busy ones among them.
        targets: Scored metrics.
        examples: Every model's forecasts at :attr:`example_origin`, for fan charts.
        example_origin: The scored origin the examples come from (the middle one).
        variation: Per group and model, the ``std(p50) / std(actual)`` of every scored series.
    """

    boards: dict[str, ScoreBoard]
    origins: list[int]
    servers: tuple[str, ...]
    busy: tuple[str, ...]
    targets: tuple[str, ...]
    examples: dict[str, Forecast] = field(default_factory=dict)
    example_origin: int | None = None
    variation: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)

    def summary(self, group: str = "all", by: str = "model") -> pl.DataFrame:
        """Mean scores of ``group`` per model, or per model and ``metric`` or ``horizon_step``."""
        return self.boards[group].summary(by)

    def mase_ratio(self, group: str = "all", model: str = TFT, reference: str = "seasonal_naive") -> float | None:
        """Return ``model``'s mean MASE over ``reference``'s in ``group`` (``None`` when either is missing)."""
        table = {r["model"]: r["mase"] for r in self.summary(group).to_dicts()} if self.boards[group].models else {}
        if table.get(model) is None or not table.get(reference):
            return None
        return float(table[model] / table[reference])

    def p50_variation(self, group: str = "all") -> dict[str, float | None]:
        """Return each model's median ``std(p50) / std(actual)`` over the scored series of ``group``."""
        out: dict[str, float | None] = {}
        for model, parts in self.variation.get(group, {}).items():
            ratios = np.concatenate(parts) if parts else np.zeros(0)
            ratios = ratios[np.isfinite(ratios)]
            out[model] = float(np.median(ratios)) if ratios.size else None
        return out


def scored_origins(first: int, last: int, horizon: int, stride: int, count: int) -> list[int]:
    """Return the origins scored between global steps ``first`` and ``last`` (the test period's bounds).

    The grid holds every ``stride``-th step from the step before ``first`` whose horizon ends by
    ``last``; ``count`` of them, evenly spread, are kept (all when ``count`` is 0 or larger).
    """
    grid = list(range(first - 1, last - horizon + 1, stride))
    if not count or len(grid) <= count:
        return grid
    picks = np.unique(np.linspace(0, len(grid) - 1, count).round().astype(int))
    return [grid[i] for i in picks]


def busy_servers(
    frame: pl.DataFrame, servers: Sequence[str], *, before: datetime, quantile: float, metric: str = BUSY_METRIC
) -> tuple[tuple[str, ...], float]:
    """Return the busy ones of ``servers`` and the threshold: mean ``metric`` above the fleet's ``quantile``.

    Means are taken over every server of ``frame`` before ``before`` (the test period's start).

    Raises:
        ConfigError: when ``quantile`` is outside [0, 1] or no server has a ``metric`` value before ``before``.
    """
    if not 0 <= quantile <= 1:
        raise ConfigError(f"busy_quantile: a share in [0, 1] is allowed, got {quantile!r}")
    means = (
        frame.filter(pl.col(c.TIMESTAMP) < before)
        .group_by(c.SERVER)
        .agg(pl.col(metric).mean().alias("mean"))
        .drop_nulls("mean")
    )
    if means.height == 0:
        raise ConfigError(f"no server has a {metric} value before {before.isoformat()}: cannot tell busy from idle")
    threshold = float(np.quantile(means["mean"].to_numpy(), quantile))
    mean_of = dict(means.iter_rows())
    busy = tuple(s for s in sorted(servers) if mean_of.get(s, -np.inf) > threshold)
    return busy, threshold


def zero_shot_gap(targets: Sequence[str], frame: pl.DataFrame) -> list[str]:
    """Return the metrics of ``targets`` that ``frame`` has no value of (absent or entirely null)."""
    return [t for t in targets if t not in frame.columns or frame[t].null_count() == frame.height]


def score_real(
    bundle: Bundle,
    frame: pl.DataFrame,
    *,
    test_servers: Sequence[str],
    test_start: datetime,
    busy: Sequence[str] = (),
    config: RealDataConfig | None = None,
) -> RealScores:
    """Score ``bundle`` and the baselines by rolling origins on the test servers and period.

    Args:
        bundle: The model (its targets are scored).
        frame: Contract rows holding the test servers' history before and during the test period.
        test_servers: Servers to forecast (held out from training).
        test_start: First forecast time of the test period (UTC); it runs to the end of ``frame``.
        busy: The busy ones of ``test_servers`` (the rest are idle).
        config: Scoring settings.

    Raises:
        ConfigError: when a test server is not in ``frame`` or the test period holds no origin.
    """
    config = config or RealDataConfig()
    servers = tuple(sorted(test_servers))
    data, panel, actual = scored_panels(frame, servers, bundle.spec.targets)
    targets, horizon = bundle.spec.targets, bundle.spec.horizon
    origins = scored_origins(step_of(test_start), panel.last_step, horizon, config.origin_stride, config.origins)
    if not origins:
        raise ConfigError(
            f"the test period from {test_start.isoformat()} holds no origin with a {horizon}-step horizon"
        )
    result = RealScores({g: ScoreBoard(targets, horizon) for g in GROUPS}, origins, servers, tuple(busy), targets)
    result.example_origin = origins[len(origins) // 2]
    feeder = HistoryFeeder(Engine(bundle), data)
    for origin in tqdm(origins, desc="real-data origins", disable=not config.progress):
        forecasts = {TFT: feeder.forecast_at(origin, list(servers))}
        history = panel.until(origin, config.history_steps)
        for name in config.baselines:
            forecasts[name] = BASELINES[name].forecast(history, horizon, residual_origins=config.residual_origins)
        _score_origin(result, panel, actual, history, origin, forecasts)
        if origin == result.example_origin:
            result.examples = forecasts
    return result


def _score_origin(
    result: RealScores,
    panel: Panel,
    actual: np.ndarray,
    history: Panel,
    origin: int,
    forecasts: dict[str, Forecast],
) -> None:
    """Add every model's scores at ``origin`` on the servers all of them forecast, per group."""
    common = set(panel.servers).intersection(*(fc.servers for fc in forecasts.values()))
    rows = np.array([i for i, s in enumerate(panel.servers) if s in common], dtype=np.int64)
    if not len(rows):
        return
    horizon = next(iter(forecasts.values())).horizon
    start = origin + 1 - (panel.last_step - actual.shape[1] + 1)
    truth = actual[rows, start : start + horizon].transpose(0, 2, 1)  # (n, m, H)
    scale = seasonal_scale(history.values[rows])
    names = [panel.servers[i] for i in rows]
    busy = np.array([s in result.busy for s in names])
    masks = {"all": np.ones(len(names), bool), "busy": busy, "idle": ~busy}
    for model, fc in forecasts.items():
        index = {s: i for i, s in enumerate(fc.servers)}
        quantiles = fc.quantiles[[index[s] for s in names]]
        ratio = _variation(quantiles[..., 1], truth)
        for group, mask in masks.items():
            if mask.any():
                result.boards[group].add(model, truth[mask], quantiles[mask], scale[mask])
                result.variation.setdefault(group, {}).setdefault(model, []).append(ratio[mask].ravel())


def _variation(p50: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Return ``(n, m)`` ``std(p50) / std(actual)`` over the horizon (NaN where the actual is constant)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a series without any actual value: NaN
        spread = np.nanstd(truth, axis=-1)
        return np.where(spread > 1e-9, np.std(p50, axis=-1) / spread, np.nan)


# --------------------------------------------------------------------------- published figures


def group_figures(result: RealScores, group: str) -> dict[str, Any]:
    """Return ``scores`` (model -> mase, scaled_pinball, coverage, n), ``per_metric`` and ratios of one group."""
    if not result.boards[group].models:
        return {"scores": {}, "per_metric": {}, "mase_ratio_vs_seasonal_naive": {}, "p50_variation": {}}
    overall = result.summary(group)
    per_metric = result.summary(group, "metric")
    keys = ("mase", "scaled_pinball", "coverage")
    models = result.boards[group].models
    return {
        "scores": {r["model"]: {k: r[k] for k in (*keys, "n")} for r in overall.to_dicts()},
        "per_metric": {
            m: {r["metric"]: {k: r[k] for k in keys} for r in per_metric.filter(pl.col("model") == m).to_dicts()}
            for m in models
        },
        "mase_ratio_vs_seasonal_naive": {m: result.mase_ratio(group, m) for m in models},
        "p50_variation": result.p50_variation(group),
    }


def real_data_targets(result: RealScores) -> list[dict[str, Any]]:
    """Return the issue's targets for the TFT on real data, each with its value and whether it is met.

    A target whose figure is missing (e.g. no busy server was scored) is missed.
    """
    coverage = group_figures(result, "all")["scores"].get(TFT, {}).get("coverage")
    low, high = COVERAGE_TARGET
    rows = [
        ("mase_vs_seasonal_naive", f"TFT mean MASE <= {MASE_RATIO_TARGET} x seasonal naive",
         result.mase_ratio("all"), lambda v: v <= MASE_RATIO_TARGET),
        ("mase_vs_mstl_ets", "TFT mean MASE <= MSTL+AutoETS's (ratio <= 1)",
         result.mase_ratio("all", reference=MSTL_NAME), lambda v: v <= 1.0),
        ("busy_mase_vs_seasonal_naive", f"TFT mean MASE on busy VMs <= {BUSY_MASE_RATIO_TARGET} x seasonal naive",
         result.mase_ratio("busy"), lambda v: v <= BUSY_MASE_RATIO_TARGET),
        ("coverage", f"TFT p10-p90 coverage in [{low}, {high}]", coverage, lambda v: low <= v <= high),
    ]  # fmt: skip
    return [_target(*row) for row in rows]


def _target(name: str, text: str, value: float | None, rule: Callable[[float], bool]) -> dict[str, Any]:
    return {"name": name, "text": text, "value": value, "met": value is not None and bool(rule(value))}


def zero_shot_figures(
    bundle: str, targets: Sequence[str], gap: Sequence[str], result: RealScores | None, *, error: str | None = None
) -> dict[str, Any]:
    """Return what ``metrics.json`` says of the zero-shot bundle: its scores, or why it could not be scored.

    Args:
        bundle: Where the bundle was read from.
        targets: The metrics it forecasts.
        gap: Those the data lacks (:func:`zero_shot_gap`).
        result: Its scores (``None`` when it could not be scored).
        error: Why the bundle could not be read, if it could not.
    """
    out: dict[str, Any] = {"bundle": bundle, "targets": list(targets), "missing_metrics": list(gap)}
    if result is None:
        reason = zero_shot_reason(gap) if gap else f"the bundle could not be read: {error or 'unknown error'}"
        return out | {"scored": False, "reason": reason}
    return out | {"scored": True, "reason": None, **{g: group_figures(result, g) for g in GROUPS}}


def zero_shot_reason(gap: Sequence[str]) -> str:
    """Say why a bundle that needs the metrics ``gap`` cannot forecast this data."""
    return (
        f"the bundle needs {', '.join(gap)}, which the data lacks: its encoder reads every one of its targets "
        "as input, so without them it forecasts no server (not even the metrics it shares with the data)"
    )


def real_data_metrics(
    result: RealScores, *, busy_threshold: float, zero_shot: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return every figure notebook 07 publishes, ready for :func:`workbench.reports.write_metrics`.

    Keys: ``servers``, ``busy_servers``, ``idle_servers``, ``origins``, ``targets``,
    ``busy_threshold_cpu_pct``; per group (``all``, ``busy``, ``idle``) the :func:`group_figures`;
    ``zero_shot``; ``target_table`` (name, text, value, met), ``targets_met`` and ``missed_targets``.
    """
    table = real_data_targets(result)
    return {
        "servers": len(result.servers),
        "busy_servers": len(result.busy),
        "idle_servers": len(result.servers) - len(result.busy),
        "origins": len(result.origins),
        "targets": list(result.targets),
        "busy_threshold_cpu_pct": busy_threshold,
        **{g: group_figures(result, g) for g in GROUPS},
        "zero_shot": zero_shot,
        "target_table": table,
        "targets_met": {t["name"]: t["met"] for t in table},
        "missed_targets": [t["text"] for t in table if not t["met"]],
    }
