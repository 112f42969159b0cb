"""Rolling-origin backtest of the engine's TFT forecasts next to the baselines, on held-out data.

At each origin ``o`` (the last observed step) the engine holds exactly the test servers'
history up to ``o`` (fed incrementally, as the daemon is), every baseline sees the same
history, and all forecast ``o+1 … o+horizon``. Scored origins lie every ``origin_stride`` steps
from the step before the test period to the last one whose horizon ends inside it; only
servers every model forecast are scored, so all models are measured on the same values.
Early-warning origins lie every ``warning_stride`` steps over the whole test period: at each,
the engine's forecast feeds one :class:`~workbench.alerts.AlertTracker` per alert rule
(:mod:`workbench.alert_rules`: the same objects the daemon runs), and the warning features of
the forecast are kept for the incident calibration (see :mod:`workbench.evaluation.warning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from workbench import contract as c
from workbench.alert_rules import make_rule
from workbench.alerts import RULE_NAMES, SEVERITIES, AlertTracker
from workbench.baselines import (
    BASELINES,
    DEFAULT_BASELINES,
    RESIDUAL_ORIGINS,
    SEASON_STEPS,
    Panel,
    panel_from_frame,
    step_of,
)
from workbench.early_warning.dataset import WarningSet
from workbench.early_warning.features import warning_features
from workbench.errors import ConfigError
from workbench.evaluation.metrics import ScoreBoard, seasonal_scale
from workbench.evaluation.warning import ALARM_SCHEMA, EarlyWarning, Window, early_warning
from workbench.forecast import SOURCE_TFT, Forecast
from workbench.inference.engine import Engine
from workbench.model.bundle import Bundle
from workbench.thresholds import Thresholds

TFT = SOURCE_TFT  # the model column of the score tables


@dataclass(frozen=True)
class BacktestConfig:
    """Settings of a rolling-origin backtest.

    Attributes:
        origin_stride: Steps between scored origins (12 = hourly).
        warning_stride: Steps between early-warning origins; 0 skips early warning. 1 evaluates
            the alert rules at every step, as the daemon does, so lead times are exact to 5 min.
        history_steps: Steps of history the baselines see at each origin (and over which the
            seasonal-naive MASE scale is computed); at least 288 + 1.
        residual_origins: Origins whose in-sample residuals give the baselines' bands.
        baselines: Baselines measured next to the TFT (names of :data:`workbench.baselines.BASELINES`;
            by default the cheap rules, without the fitted ``mstl_ets``).
        alert_severity: Least alert severity that counts as an alarm (the incidents' onset is
            the critical crossing, so ``critical`` by default); the static rule always counts
            warnings (a static threshold warns at the warning level, or it could never warn early).
        rules: Alert rules scored (:data:`workbench.alerts.RULE_NAMES`); ``None``: every rule
            the bundle supports (``calibrated`` only with an incident calibration).
        progress: Show a tqdm progress bar.
    """

    origin_stride: int = 12
    warning_stride: int = 1
    history_steps: int = 3 * SEASON_STEPS
    residual_origins: int = RESIDUAL_ORIGINS
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    alert_severity: Literal["warning", "critical"] = "critical"
    rules: tuple[str, ...] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.origin_stride < 1 or self.warning_stride < 0:
            raise ConfigError(f"need origin_stride >= 1 and warning_stride >= 0, got {self}")
        if self.history_steps <= SEASON_STEPS:
            raise ConfigError(f"history_steps must exceed {SEASON_STEPS}, got {self.history_steps}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; allowed: {', '.join(BASELINES)}")
        unknown_rules = sorted(set(self.rules or ()) - set(RULE_NAMES))
        if unknown_rules:
            raise ConfigError(f"unknown alert rule(s) {unknown_rules}; allowed: {', '.join(RULE_NAMES)}")
        if self.alert_severity not in SEVERITIES:
            raise ConfigError(f"alert_severity must be one of {', '.join(SEVERITIES)}, got {self.alert_severity!r}")


@dataclass
class BacktestResult:
    """What a backtest measured.

    Attributes:
        board: Accumulated forecast scores.
        alarms: Alarm table of every rule at the early-warning origins.
        window: Where the alarm rules were evaluated (``None`` without early warning).
        origins: Scored origins (global step indices).
        servers: Test servers.
        targets: Scored metrics.
        examples: Forecasts of every model at :attr:`example_origin`, for fan charts.
        example_origin: The scored origin the examples come from.
        warning_set: Warning features of the TFT's forecasts at the early-warning origins.
        rules: The alert rules scored, the product's rule first.
    """

    board: ScoreBoard
    alarms: pl.DataFrame
    window: Window | None
    origins: list[int]
    servers: tuple[str, ...]
    targets: tuple[str, ...]
    examples: dict[str, Forecast] = field(default_factory=dict)
    example_origin: int | None = None
    warning_set: WarningSet | None = None
    rules: tuple[str, ...] = ()

    @property
    def scores(self) -> pl.DataFrame:
        """Tidy scores: ``model, metric, horizon_step, pinball, scaled_pinball, mase, coverage, n``."""
        return self.board.frame()

    def summary(self, by: str = "model") -> pl.DataFrame:
        """Mean scores per model (``by="model"``), or per model and ``metric`` or ``horizon_step``."""
        return self.board.summary(by)

    def mase_ratio(self, model: str = TFT, reference: str = "seasonal_naive") -> float | None:
        """Return ``model``'s mean MASE divided by ``reference``'s (same series, origins and steps)."""
        table = {r["model"]: r["mase"] for r in self.summary().to_dicts()}
        if table.get(model) is None or not table.get(reference):
            return None
        return float(table[model] / table[reference])

    def early_warning(self, incidents: pl.DataFrame) -> EarlyWarning:
        """Score the alarm rules against the incidents' ground truth.

        Raises:
            ConfigError: when the backtest ran without early warning.
        """
        if self.window is None:
            raise ConfigError("this backtest ran with warning_stride=0: no alarms to score")
        return early_warning(self.alarms, incidents, self.window, rules=list(self.rules))


def scored_panels(
    frame: pl.DataFrame, servers: Sequence[str], targets: Sequence[str]
) -> tuple[pl.DataFrame, Panel, np.ndarray]:
    """Return the test servers' rows on the grid, their panel (gaps filled, as models read it) and raw values.

    Raises:
        ConfigError: when a test server is not in ``frame``.
    """
    data = c.to_grid(frame.filter(pl.col(c.SERVER).is_in(list(servers))))
    absent = sorted(set(servers) - set(data[c.SERVER].unique().to_list()))
    if absent:
        raise ConfigError(f"test servers not in the data: {', '.join(absent)}")
    return data, panel_from_frame(data, targets), panel_from_frame(data, targets, fill=False).values


def backtest(
    bundle: Bundle,
    frame: pl.DataFrame,
    *,
    test_servers: tuple[str, ...] | list[str],
    test_start: datetime,
    test_end: datetime | None = None,
    config: BacktestConfig | None = None,
    thresholds: Thresholds | None = None,
    example_step: int | None = None,
) -> BacktestResult:
    """Run the rolling-origin backtest of ``bundle`` and the baselines on the test servers and period.

    Args:
        bundle: The model (its targets are scored).
        frame: Contract rows on the step grid, including the history before ``test_start``.
        test_servers: Servers to forecast (held out from training, ideally).
        test_start: First forecast time of the test period (UTC).
        test_end: Last time of the test period (default: the last row of ``frame``).
        config: Backtest settings.
        thresholds: Levels of the alert rules (default :class:`Thresholds`).
        example_step: Keep every model's forecasts at the scored origin nearest this step
            (default: the middle scored origin).

    Raises:
        ConfigError: when a test server is not in ``frame`` or the test period has no origin.
    """
    config = config or BacktestConfig()
    thresholds = thresholds or Thresholds()
    servers = tuple(sorted(test_servers))
    data, panel, actual = scored_panels(frame, servers, bundle.spec.targets)
    targets, horizon = bundle.spec.targets, bundle.spec.horizon
    last = step_of(test_end) if test_end is not None else panel.last_step
    first = step_of(test_start) - 1
    scored = list(range(first, last - horizon + 1, config.origin_stride))
    warn = list(range(first, last + 1, config.warning_stride)) if config.warning_stride else []
    if not scored and not warn:
        raise ConfigError(
            f"the test period ({test_start} .. {last}) holds no origin with a full {horizon}-step horizon"
        )
    keep_at = _example_origin(scored, example_step)
    result = BacktestResult(
        ScoreBoard(targets, horizon), pl.DataFrame(schema=ALARM_SCHEMA), None, scored, servers, targets
    )
    feeder = HistoryFeeder(Engine(bundle), data)
    result.rules = config.rules or scored_rules(bundle)
    trackers = {name: AlertTracker(make_rule(name, bundle.incidents)) for name in result.rules}
    alarm_rows: list[tuple[str, str, str, int]] = []
    feature_parts = []
    for origin in tqdm(sorted(set(scored) | set(warn)), desc="backtest", disable=not config.progress):
        forecast = feeder.forecast_at(origin, list(servers))
        if origin in warn:
            for name, tracker in trackers.items():
                rank = 1 if name == "static" else SEVERITIES.index(config.alert_severity) + 1
                active = tracker.update(forecast, thresholds).active
                alarm_rows += [(name, a.server, a.metric, origin) for a in active if a.rank >= rank]
            feature_parts.append(warning_features(forecast, thresholds))
        if origin in scored:
            forecasts = _score_origin(result.board, panel, actual, origin, forecast, config, horizon)
            if origin == keep_at:
                result.examples, result.example_origin = forecasts, origin
    if warn:
        result.window = Window(servers, warn[0], warn[-1], config.warning_stride, max_lead_steps=horizon)
        result.alarms = pl.DataFrame(alarm_rows, schema=ALARM_SCHEMA, orient="row")
        result.warning_set = WarningSet.stack(servers, targets, warn, feature_parts)
    return result


def scored_rules(bundle: Bundle) -> tuple[str, ...]:
    """Return the alert rules a backtest scores by default, the product's rule first.

    The product's rule is ``calibrated`` when the bundle has an incident calibration, else
    ``band_edge``; ``predict_linear`` and ``static`` are the baselines.
    """
    first = ("calibrated",) if bundle.incidents is not None else ()
    return (*first, "band_edge", "predict_linear", "static")


class HistoryFeeder:
    """Feeds an engine the rows up to each origin, in increasing order, then forecasts.

    Args:
        engine: The engine to feed (it keeps only the history its model reads).
        data: Contract rows on the step grid.
    """

    def __init__(self, engine: Engine, data: pl.DataFrame) -> None:
        self.engine = engine
        steps = (data[c.TIMESTAMP].dt.epoch("s") // c.STEP_SECONDS).alias("__step")
        self.data = data.with_columns(steps).sort("__step")
        self.steps = self.data["__step"].to_numpy()
        self.fed = int(self.steps.min()) - 1 if len(self.steps) else 0

    def forecast_at(self, origin: int, servers: list[str]) -> Forecast:
        """Ingest the rows up to ``origin`` (inclusive) and forecast ``servers`` from there."""
        lo = max(self.fed, origin - self.engine.store.capacity)
        a, b = np.searchsorted(self.steps, [lo, origin], side="right")
        if b > a:
            self.engine.ingest(self.data.slice(int(a), int(b - a)).drop("__step"))
        self.fed = origin
        return self.engine.forecast(servers)


def _score_origin(
    board: ScoreBoard,
    panel: Panel,
    actual: np.ndarray,
    origin: int,
    forecast: Forecast,
    config: BacktestConfig,
    horizon: int,
) -> dict[str, Forecast]:
    """Forecast with every baseline at ``origin`` and add all models' scores on their common servers."""
    history = panel.until(origin, config.history_steps)
    forecasts = {TFT: forecast}
    for name in config.baselines:
        forecasts[name] = BASELINES[name].forecast(history, horizon, residual_origins=config.residual_origins)
    common = set(panel.servers)
    for fc in forecasts.values():
        common &= set(fc.servers)
    rows = [i for i, s in enumerate(panel.servers) if s in common]
    if not rows:
        return forecasts
    start = origin + 1 - (panel.last_step - actual.shape[1] + 1)
    truth = actual[rows, start : start + horizon].transpose(0, 2, 1)  # (n, m, H)
    scale = seasonal_scale(history.values[rows])
    names = [panel.servers[i] for i in rows]
    for model, fc in forecasts.items():
        index = {s: i for i, s in enumerate(fc.servers)}
        board.add(model, truth, fc.quantiles[[index[s] for s in names]], scale)
    return forecasts


def _example_origin(scored: list[int], example_step: int | None) -> int | None:
    if not scored:
        return None
    if example_step is None:
        return scored[len(scored) // 2]
    return min(scored, key=lambda o: abs(o - example_step))
