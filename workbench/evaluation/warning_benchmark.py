"""The standard early-warning benchmark: seeded fleets, the calibration fit, every rule scored.

Four simulated fleets with fixed seeds (:data:`VALIDATION`, :data:`TEST`), each a day of
warm-up (the model's encoder) followed by the scored days. The *validation* fleets fit the
bundle's incident calibration and alert threshold (:func:`calibrate`); the *test* fleets, with
other seeds, are never seen by any fit (:func:`run_benchmark`):

* ``test-critical``: the ``critical`` scenario (30 % of servers at 10× the incident rate,
  intensity 2), scored for recall, precision, F1, lead times and the precision–recall curve;
* ``test-healthy``: the ``healthy`` scenario, scored for false alarms per server-day and for
  whether the fleet probability matches the observed incident rate.

Every rule runs on the same backtest (the engine fed every step, as the daemon is), through
the daemon's own rule objects and alert tracker: the calibrated-probability rule, the TFT's
band-edge rule, ``predict_linear`` and the static threshold. The precision–recall curve over
the calibrated rule's threshold reads the probabilities directly (no hysteresis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.early_warning.calibrator import HEALTHY_RATE, WINDOW_STEPS, IncidentCalibration, any_of
from workbench.early_warning.fit import (
    ALERT_WINDOW,
    Fleet,
    fit_incidents,
    probabilities,
    threshold_curve,
)
from workbench.errors import ConfigError
from workbench.evaluation.backtest import BacktestConfig, backtest
from workbench.evaluation.probability import probability_scores, reliability
from workbench.evaluation.warning import early_warning
from workbench.model.bundle import Bundle
from workbench.simulator import DEFAULT_START, make_fleet, simulate

WARMUP_DAYS = 1
TARGETS = {  # the targets, as the report checks them
    "recall": 0.8, "precision": 0.7, "lead": 60.0, "f1_ratio": 2.0, "false_alarms": 0.1, "ece": 0.05, "skill": 0.3,
}  # fmt: skip
RULES = ("calibrated", "band_edge", "predict_linear", "static")
BASELINE_RULES = ("band_edge", "predict_linear", "static")  # what validation fleets run: no calibration yet


@dataclass(frozen=True)
class FleetSpec:
    """A seeded benchmark fleet.

    Attributes:
        name: Fleet label.
        servers: Number of servers.
        days: Scored days (after :data:`WARMUP_DAYS` of warm-up).
        seed: Simulator seed.
        scenario: Simulator scenario for the whole span.
    """

    name: str
    servers: int
    days: int
    seed: int
    scenario: str


VALIDATION: tuple[FleetSpec, ...] = (
    FleetSpec("validation-critical", 100, 4, 1401, "critical"),
    FleetSpec("validation-healthy", 100, 4, 1402, "healthy"),
)
TEST: tuple[FleetSpec, ...] = (
    FleetSpec("test-critical", 120, 4, 2401, "critical"),
    FleetSpec("test-healthy", 100, 4, 2402, "healthy"),
)


def run_fleet(
    bundle: Bundle,
    spec: FleetSpec,
    *,
    rules: tuple[str, ...] = RULES,
    progress: bool = False,
    scale: float = 1.0,
    warning_stride: int = 1,
) -> Fleet:
    """Simulate ``spec`` and backtest ``bundle`` on it at every step; return its features and alarms.

    Args:
        bundle: The model.
        spec: The fleet.
        rules: Alert rules to run (``calibrated`` needs the bundle's incident calibration).
        progress: Show progress bars.
        scale: Shrinks servers and days (tests use a small fraction; 1 = the benchmark).
        warning_stride: Steps between scored origins (1, every step as the daemon runs, is the
            benchmark; more is a quicker, coarser look).
    """
    servers = max(4, round(spec.servers * scale))
    days = max(1.0, spec.days * scale)
    sim = simulate(make_fleet(servers, spec.seed), WARMUP_DAYS + days, scenario=spec.scenario)
    names = tuple(sorted(sim.metrics[c.SERVER].unique().to_list()))
    result = backtest(
        bundle,
        sim.metrics,
        test_servers=names,
        test_start=DEFAULT_START + timedelta(days=WARMUP_DAYS),
        config=BacktestConfig(
            origin_stride=c.HORIZON_STEPS * 3, warning_stride=warning_stride, rules=rules, progress=progress
        ),
    )
    if result.window is None or result.warning_set is None:
        raise ConfigError(f"{spec.name}: the backtest produced no early-warning origins")
    return Fleet(spec.name, result.warning_set, sim.incidents, result.window, result.alarms)


def calibrate(
    bundle: Bundle, *, progress: bool = False, scale: float = 1.0, warning_stride: int = 1
) -> IncidentCalibration:
    """Fit ``bundle``'s incident calibration on the :data:`VALIDATION` fleets and return it (see :func:`run_fleet`)."""
    fleets = [
        run_fleet(bundle, spec, rules=BASELINE_RULES, progress=progress, scale=scale, warning_stride=warning_stride)
        for spec in VALIDATION
    ]
    calibration = fit_incidents(fleets)
    healthy = [f for f, spec in zip(fleets, VALIDATION, strict=True) if spec.scenario == "healthy"]
    record = {
        **calibration.record,
        "fleet_specs": [vars(s) for s in VALIDATION],
        "scale": scale,
        "warning_stride": warning_stride,
        HEALTHY_RATE: {window: server_rate(healthy, steps) for window, steps in WINDOW_STEPS.items()},
    }
    return replace(calibration, record=record)


def server_rate(fleets: Sequence[Fleet], window_steps: int) -> float:
    """Return the share of (server, origin) pairs of ``fleets`` with an incident within the window."""
    hits, total = 0, 0
    for fleet in fleets:
        seen = ~np.isnan(fleet.warnings.features).all(axis=(2, 3))
        labels = fleet.warnings.labels(fleet.incidents, window_steps).max(axis=2)
        hits, total = hits + int(labels[seen].sum()), total + int(seen.sum())
    return hits / total if total else float("nan")


@dataclass
class BenchmarkResult:
    """Everything the early-warning report shows.

    Attributes:
        rules: Per fleet and rule: the event-level summary of :func:`early_warning`.
        curve: Precision–recall of the calibrated rule over its threshold, on ``test-critical``.
        auprc: Area under that curve (step-wise, recall from 0).
        lead_by_type: Per rule and incident type on ``test-critical``: incidents, hits, recall,
            median lead minutes.
        probability: Per fleet and window: Brier, Brier skill, ECE of the servers' probabilities.
        reliability: Per fleet and window: the reliability table.
        fleet_probability: Per fleet: mean 30-min and 8-h fleet probability and observed rates.
        threshold: The calibrated rule's threshold (from the bundle).
        calibrated: Whether the bundle had an incident calibration.
    """

    rules: pl.DataFrame
    curve: pl.DataFrame
    auprc: float
    lead_by_type: pl.DataFrame
    probability: pl.DataFrame
    reliability: pl.DataFrame
    fleet_probability: pl.DataFrame
    threshold: float
    calibrated: bool
    fleets: dict[str, Fleet] = field(default_factory=dict)

    def metrics(self) -> dict[str, object]:
        """Return the headline figures as plain data (the report's ``metrics.json``)."""
        crit = {r["rule"]: r for r in self.rules.filter(pl.col("fleet") == "test-critical").to_dicts()}
        healthy = {r["rule"]: r for r in self.rules.filter(pl.col("fleet") == "test-healthy").to_dicts()}
        best_baseline = max(crit[r]["f1"] or 0.0 for r in ("predict_linear", "static"))
        probs = {f"{r['fleet']}/{r['window']}": r for r in self.probability.to_dicts()}
        return {
            "calibrated": self.calibrated,
            "threshold": self.threshold,
            "critical": {rule: _pick(row) for rule, row in crit.items()},
            "healthy_false_alarms_per_server_day": {
                rule: row["false_alarms_per_server_day"] for rule, row in healthy.items()
            },
            "f1_ratio_vs_best_baseline": (crit["calibrated"]["f1"] / best_baseline) if best_baseline else None,
            "auprc": self.auprc,
            "probability": probs,
            "fleet_probability": self.fleet_probability.to_dicts(),
        }

    def targets(self) -> pl.DataFrame:
        """Return the issue's targets as ``target, value, met`` rows (a missing figure fails)."""
        crit = self.rules.filter((pl.col("fleet") == "test-critical") & (pl.col("rule") == "calibrated")).to_dicts()
        healthy = self.rules.filter((pl.col("fleet") == "test-healthy") & (pl.col("rule") == "calibrated")).to_dicts()
        ratio = self.metrics()["f1_ratio_vs_best_baseline"]
        c0, h0 = (crit or [{}])[0], (healthy or [{}])[0]
        rows = [
            _check("recall >= 0.8 (test-critical)", c0.get("recall"), TARGETS["recall"]),
            _check("precision >= 0.7 (test-critical)", c0.get("precision"), TARGETS["precision"]),
            _check("median lead >= 60 min (test-critical)", c0.get("median_lead_minutes"), TARGETS["lead"]),
            _check("F1 >= 2x the best of predict_linear and static", ratio, TARGETS["f1_ratio"]),
            _check("false alarms per server-day <= 0.1 (test-healthy)", h0.get("false_alarms_per_server_day"),
                   TARGETS["false_alarms"], below=True),
        ]  # fmt: skip
        for row in self.probability.to_dicts():
            where = f"{row['fleet']}, {row['window']}"
            rows.append(_check(f"ECE <= 0.05 ({where})", row["ece"], TARGETS["ece"], below=True))
            rows.append(_check(f"Brier skill >= 0.3 ({where})", row["brier_skill"], TARGETS["skill"]))
        gap = self.fleet_probability.filter((pl.col("fleet") == "test-healthy") & (pl.col("window") == "30m"))
        for value in gap["gap"].to_list():
            rows.append(_check("healthy 30-min fleet probability within 0.05 of observed", value, 0.0, within=0.05))
        return pl.DataFrame(rows, schema=["target", "value", "met"], orient="row")


def _check(
    name: str, value: object, bar: float, *, below: bool = False, within: float | None = None
) -> tuple[str, float | None, bool]:
    """One target row: ``value >= bar`` (``<=`` when ``below``, ``|value - bar| <= within``); None fails."""
    if not isinstance(value, int | float) or value != value:  # None or NaN
        return name, None, False
    v = float(value)
    ok = abs(v - bar) <= within if within is not None else (v <= bar if below else v >= bar)
    return name, v, ok


def _pick(row: dict[str, object]) -> dict[str, object]:
    keys = ("incidents", "hit", "recall", "precision", "f1", "median_lead_minutes", "false_alarms_per_server_day")
    return {k: row[k] for k in keys}


def run_benchmark(
    bundle: Bundle,
    *,
    progress: bool = False,
    scale: float = 1.0,
    specs: Sequence[FleetSpec] = TEST,
    warning_stride: int = 1,
) -> BenchmarkResult:
    """Score every rule on the :data:`TEST` fleets with ``bundle`` (see the module docstring and :func:`run_fleet`).

    Raises:
        ConfigError: when the bundle has no incident calibration (run :func:`calibrate` first).
    """
    calibration = bundle.incidents
    if calibration is None:
        raise ConfigError("the bundle has no incident calibration: run `workbench calibrate-incidents` first")
    threshold = float(calibration.alert["threshold"])
    fleets = {
        spec.name: run_fleet(bundle, spec, progress=progress, scale=scale, warning_stride=warning_stride)
        for spec in specs
    }
    rules, probs, tables, fleet_rows = [], [], [], []
    for name, fleet in fleets.items():
        scored = early_warning(fleet.alarms, fleet.incidents, fleet.window, rules=list(RULES))
        rules.append(scored.summary.with_columns(pl.lit(name).alias("fleet")))
        for window, steps in WINDOW_STEPS.items():
            _, p_server = probabilities(fleet.warnings, calibration, window)
            y = fleet.warnings.labels(fleet.incidents, steps).max(axis=2).astype(float)
            y[np.isnan(p_server)] = np.nan
            probs.append({"fleet": name, "window": window, **probability_scores(p_server, y)})
            tables.append(reliability_rows(name, window, p_server, y))
            fleet_rows.append(_fleet_row(name, window, p_server, y))
    critical = fleets["test-critical"] if "test-critical" in fleets else next(iter(fleets.values()))
    curve = threshold_curve([critical], [probabilities(critical.warnings, calibration, ALERT_WINDOW)[0]])
    return BenchmarkResult(
        rules=pl.concat(rules).select("fleet", *[col for col in rules[0].columns if col != "fleet"]),
        curve=curve,
        auprc=auprc(curve),
        lead_by_type=lead_by_type(critical),
        probability=pl.DataFrame(probs),
        reliability=pl.concat(tables),
        fleet_probability=pl.DataFrame(fleet_rows),
        threshold=threshold,
        calibrated=True,
        fleets=fleets,
    )


def reliability_rows(fleet: str, window: str, p: np.ndarray, y: np.ndarray) -> pl.DataFrame:
    """Return the reliability table of one fleet and window, labelled."""
    return reliability(p, y).with_columns(pl.lit(fleet).alias("fleet"), pl.lit(window).alias("window"))


def _fleet_row(fleet: str, window: str, p_server: np.ndarray, y: np.ndarray) -> dict[str, object]:
    """Mean fleet probability (at least one server in an incident) against the observed rate."""
    p_fleet = any_of(np.nan_to_num(p_server, nan=0.0), axis=1)
    observed = np.nanmax(np.where(np.isnan(y), 0.0, y), axis=1)
    return {
        "fleet": fleet,
        "window": window,
        "mean_fleet_probability": float(p_fleet.mean()),
        "observed_rate": float(observed.mean()),
        "gap": float(p_fleet.mean() - observed.mean()),
    }


def auprc(curve: pl.DataFrame) -> float:
    """Return the area under the precision–recall points of ``curve`` (step-wise, from recall 0)."""
    pts = curve.drop_nulls(["recall", "precision"]).sort("recall").select("recall", "precision").to_numpy()
    if not len(pts):
        return 0.0
    recall = np.concatenate([[0.0], pts[:, 0]])
    # for each recall level, the best precision reachable at that recall or beyond (interpolated PR)
    precision = np.maximum.accumulate(pts[::-1, 1])[::-1]
    return float(np.sum(np.diff(recall) * precision))


def lead_by_type(fleet: Fleet) -> pl.DataFrame:
    """Return per rule and incident type: scored incidents, hits, recall and median lead minutes."""
    outcomes = early_warning(fleet.alarms, fleet.incidents, fleet.window, rules=list(RULES)).incidents
    return (
        outcomes.group_by("rule", "incident_type")
        .agg(
            pl.len().alias("incidents"),
            (pl.col("outcome") == "hit").sum().alias("hits"),
            pl.col("lead_minutes").median().alias("median_lead_minutes"),
        )
        .with_columns((pl.col("hits") / pl.col("incidents")).alias("recall"))
        .sort("rule", "incident_type")
    )


def compare(results: Mapping[str, BenchmarkResult]) -> pl.DataFrame:
    """Return one row per labelled result: the calibrated rule's headline figures side by side.

    Args:
        results: Benchmark results by label (e.g. ``incident-weighted`` and ``uniform`` training).
    """
    rows = []
    for label, result in results.items():
        calibrated = result.rules.filter(pl.col("rule") == "calibrated")
        crit = calibrated.filter(pl.col("fleet") == "test-critical").to_dicts()[0]
        healthy = calibrated.filter(pl.col("fleet") == "test-healthy")["false_alarms_per_server_day"].to_list()
        skill = {
            f"brier_skill_{r['window']}": r["brier_skill"]
            for r in result.probability.filter(pl.col("fleet") == "test-critical").to_dicts()
        }
        keys = ("recall", "precision", "f1", "median_lead_minutes")
        rows.append(
            {
                "model": label,
                "threshold": result.threshold,
                **{k: crit[k] for k in keys},
                "healthy_false_alarms_per_server_day": healthy[0] if healthy else None,
                "auprc": result.auprc,
                **skill,
            }
        )
    return pl.DataFrame(rows)
