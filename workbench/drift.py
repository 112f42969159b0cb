"""Model drift: does the served model still fit the fleet it forecasts?

Two checks, each with its own rule, both computed as the forecasts are made (no torch):

* **Inputs unlike training.** Each server's last two hours are compared with what the bundle
  saw in training for the server's profile (:class:`InputReference`, in the bundle's
  ``drift.json``): a metric is *out* when its 2-hour mean or spread lies outside the central
  99.8 % of the training windows' values; a server's inputs are *unlike training* when half or
  more of its metrics are out (:data:`METRICS_OUT`). This reacts within two hours.
* **Forecasts that no longer hold.** Each forecast is kept (every :data:`ISSUE_STRIDE` steps)
  and scored when its target steps arrive, at :data:`SCORED_STEPS` grouped in :data:`BANDS`:
  the pinball loss of p10/p50/p90, the same loss of a climatological band (the history's
  median and robust spread, what a forecaster with no model would say), and p10–p90
  coverage. The rolling ratio *model loss / climatology loss* is held against the same ratio
  on the bundle's validation period (``drift.json``, written by ``workbench drift-reference``):
  doubled (:data:`RATIO_FACTOR`) and at 1 or more (no skill left), or coverage down 30 points
  and under 50 %, and the model no longer fits. Without that reference the limits are absolute
  (ratio ≥ 1: no skill over climatology; coverage < 50 %). Sums decay with a half-life of :data:`HALF_LIFE_STEPS`.

The fleet's :data:`STATES`: ``warming_up`` (not enough scored forecasts and no input
reference), ``fits``, ``inputs_shifted`` (:data:`SHIFTED_SHARE` of the servers or more have
inputs unlike training) and ``no_longer_fits`` (some metric's ratio ≥ 1 or coverage too low
over enough scores, or inputs shifted on most servers).
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.errors import BundleError
from workbench.forecast import Forecast
from workbench.inference.window import WindowStore
from workbench.manifest import read_json

DRIFT_FILE = "drift.json"  # optional bundle file: the training inputs' bounds and the validation accuracy
WINDOW_STEPS = 24  # two hours: the span an input check reads
REFERENCE_QUANTILES = (0.001, 0.999)
METRICS_OUT = 0.5  # share of a server's metrics out of bounds that makes its inputs unlike training
SHIFTED_SHARE = 0.5
SCORED_STEPS = (1, 6, 12, 24, 48, 96)  # 5 min, 30 min, 1 h, 2 h, 4 h, 8 h ahead
BANDS = {"0-1h": (1, 6, 12), "1-4h": (24, 48), "4-8h": (96,)}
ISSUE_STRIDE = 3  # keep a forecast every 15 minutes of fleet time
HALF_LIFE_STEPS = 24
MIN_ORIGINS = 12  # forecasts (3 h of origins) scored in a band before it says anything: nearby ones err alike
MIN_SERVER_WEIGHT = 10.0  # scores a server's own ratio needs to be listed among the worst (one or two say nothing)
MIN_WEIGHT = 100.0  # decayed count of scores below which a band says nothing (a few steps of a few servers)
MAX_RATIO = 1.0  # without a validation reference: no skill over climatology
MIN_COVERAGE = 0.5
RATIO_FACTOR = 2.0  # with a validation reference: the loss ratio doubled (and lost all skill) ...
COVERAGE_DROP = 0.3  # ... or coverage fell by 30 points
Z90 = 1.2815515655446004  # p90 of a standard normal
STATES = ("warming_up", "fits", "inputs_shifted", "no_longer_fits")
POOLED = "*"  # the reference of every profile together, for profiles training never saw
_TAUS = np.array(c.QUANTILE_LEVELS)
_BAND_OF = np.array([next(i for i, steps in enumerate(BANDS.values()) if h in steps) for h in SCORED_STEPS])


@dataclass(frozen=True)
class InputReference:
    """Bounds of the training windows' 2-hour mean and spread, per profile and metric.

    Attributes:
        bounds: ``{profile: {metric: [mean_lo, mean_hi, sd_lo, sd_hi]}}``, with :data:`POOLED`.
    """

    bounds: Mapping[str, Mapping[str, Sequence[float]]]

    @classmethod
    def fit(cls, frame: pl.DataFrame, metrics: Sequence[str]) -> InputReference:
        """Fit the bounds on a contract frame (the training part of the data)."""
        rolled = _rolled(frame, metrics).drop_nulls()
        lo, hi = REFERENCE_QUANTILES
        bounds: dict[str, dict[str, list[float]]] = {}
        for name, part in [(POOLED, rolled), *((p, g) for (p,), g in rolled.group_by(c.PROFILE))]:
            bounds[str(name)] = {
                m: [float(part[f"{m}_{k}"].quantile(q) or 0.0) for k in ("mean", "sd") for q in (lo, hi)]
                for m in metrics
            }
        return cls(bounds)

    def to_json(self) -> dict[str, Any]:
        """Return the ``inputs`` entry of ``drift.json``."""
        return {"window_steps": WINDOW_STEPS, "quantiles": list(REFERENCE_QUANTILES), "bounds": self.bounds}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> InputReference:
        """Read the ``inputs`` entry of ``drift.json``."""
        return cls({p: {m: list(map(float, b)) for m, b in ms.items()} for p, ms in doc["bounds"].items()})

    def out(self, profiles: Sequence[str], means: np.ndarray, sds: np.ndarray, metrics: Sequence[str]) -> np.ndarray:
        """Return ``(servers, metrics)``: whether each 2-hour mean or spread lies outside the bounds."""
        table = np.array([[self._bounds(p, m) for m in metrics] for p in profiles]).reshape(len(profiles), -1, 4)
        mean_out = (means < table[..., 0]) | (means > table[..., 1])
        sd_out = (sds < table[..., 2]) | (sds > table[..., 3])
        return (mean_out | sd_out) & np.isfinite(means)

    def _bounds(self, profile: str, metric: str) -> Sequence[float]:
        by_metric = self.bounds.get(profile) or self.bounds[POOLED]
        return by_metric.get(metric) or self.bounds[POOLED].get(metric) or [-np.inf, np.inf, -np.inf, np.inf]


@dataclass(frozen=True)
class DriftReference:
    """What the bundle's ``drift.json`` holds: input bounds and accuracy on its validation windows.

    Attributes:
        inputs: Bounds of the training inputs (``None``: inputs are not checked).
        accuracy: ``{band: {metric: {"ratio", "coverage", ...}}}`` of the model scored on its
            validation period as the daemon scores it live (``None``: absolute limits apply).
    """

    inputs: InputReference | None = None
    accuracy: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the ``drift.json`` document."""
        return {
            "inputs": self.inputs.to_json() if self.inputs is not None else None,
            "accuracy": self.accuracy,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DriftReference:
        """Read a ``drift.json`` document."""
        inputs = doc.get("inputs")
        return cls(InputReference.from_json(inputs) if inputs else None, doc.get("accuracy"))


def read_drift_reference(bundle: Path) -> DriftReference:
    """Read a bundle folder's ``drift.json`` (an empty reference when it has none).

    Raises:
        BundleError: when the file is there but unreadable or malformed.
    """
    file = bundle / DRIFT_FILE
    if not file.is_file():
        return DriftReference()
    try:
        return DriftReference.from_json(read_json(file))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{file}: malformed: {exc!r}") from exc


def _rolled(frame: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """Each server's rolling 2-hour mean and spread of every metric (needs full windows)."""
    rolling = [
        expr
        for m in metrics
        for expr in (
            pl.col(m).rolling_mean(WINDOW_STEPS).over(c.SERVER).alias(f"{m}_mean"),
            pl.col(m).rolling_std(WINDOW_STEPS).over(c.SERVER).alias(f"{m}_sd"),
        )
    ]
    return frame.sort(c.SERVER, c.TIMESTAMP).select(c.PROFILE, *rolling)


@dataclass
class _Issued:
    """A forecast kept for scoring: its servers, origins, quantiles and climatology at the scored steps."""

    servers: list[str]
    origins: np.ndarray  # (n,)
    quantiles: np.ndarray  # (n, metrics, scored, 3)
    climate: np.ndarray  # (n, metrics, 2): median and robust spread
    done: np.ndarray  # (n, scored) scored already
    bands: np.ndarray = field(default_factory=lambda: np.zeros(len(BANDS), bool))  # scored in each band yet


@dataclass
class _Sums:
    """Decayed sums per band and metric: weight, model loss, climatology loss, covered."""

    values: np.ndarray  # (bands, metrics, 4)

    def decay(self, steps: float, half_life: float) -> None:
        self.values *= 0.5 ** (max(steps, 0.0) / half_life)


@dataclass
class DriftMonitor:
    """Scores the forecasts as actuals arrive and checks the inputs against training.

    Args:
        targets: The model's metrics, in output order.
        reference: The bundle's drift reference (empty: inputs are not checked and the
            accuracy is held to absolute limits).
        half_life_steps: Steps over which a score's weight halves (``inf``: a plain average,
            as the reference on the validation period is taken).
    """

    targets: tuple[str, ...]
    reference: DriftReference = field(default_factory=DriftReference)
    half_life_steps: float = HALF_LIFE_STEPS
    _issued: deque[_Issued] = field(default_factory=deque)
    _fleet: _Sums | None = None
    _servers: dict[str, _Sums] = field(default_factory=dict)
    _inputs: dict[str, list[str]] = field(default_factory=dict)
    _input_checked: int = 0
    _newest: int = -1
    _last_issue: int = -(10**9)
    _origins: np.ndarray = field(default_factory=lambda: np.zeros(len(BANDS), np.int64))  # forecasts scored per band

    def observe(self, forecast: Forecast, store: WindowStore) -> None:
        """Score earlier forecasts against the windows, check the inputs, and keep ``forecast``."""
        if not forecast.servers:
            return
        windows = store.windows(list(forecast.servers), store.capacity)
        newest = int(windows.last_step.max())
        if self._fleet is None:
            self._fleet = _Sums(np.zeros((len(BANDS), len(self.targets), 4)))
        if self._newest >= 0:
            self._fleet.decay(newest - self._newest, self.half_life_steps)
            for sums in self._servers.values():
                sums.decay(newest - self._newest, self.half_life_steps)
        self._newest = max(self._newest, newest)
        self._score(windows)
        self._check_inputs(windows)
        full = windows.lengths >= store.capacity  # forecasts from short histories are not the model at its best
        if newest - self._last_issue >= ISSUE_STRIDE and full.any():
            self._keep(forecast, full)
            self._last_issue = newest

    def _keep(self, forecast: Forecast, rows: np.ndarray) -> None:
        idx = np.array(SCORED_STEPS) - 1
        baseline = forecast.baseline
        if baseline is None:  # no climatology to compare with: those scores are left out (NaN)
            baseline = np.full((len(forecast.servers), len(self.targets), 2), np.nan)
        self._issued.append(
            _Issued(
                [s for s, keep in zip(forecast.servers, rows, strict=True) if keep],
                forecast.last_step[rows].astype(np.int64),
                forecast.quantiles[rows][:, :, idx, :].astype(np.float32),
                baseline[rows].astype(np.float32),
                np.zeros((int(rows.sum()), len(SCORED_STEPS)), bool),
            )
        )
        while self._issued and self._issued[0].origins.max() + max(SCORED_STEPS) < self._newest:
            self._issued.popleft()

    def _score(self, windows: Any) -> None:
        rows = {s: i for i, s in enumerate(windows.servers)}
        assert self._fleet is not None
        for issued in self._issued:
            where = np.array([rows.get(s, -1) for s in issued.servers])
            known = where >= 0
            r = np.where(known, where, 0)
            target = issued.origins[:, None] + np.array(SCORED_STEPS)[None, :]  # (n, k)
            back = windows.last_step[r][:, None] - target
            index = windows.lengths[r][:, None] - 1 - back
            ready = known[:, None] & (back >= 0) & (index >= 0) & ~issued.done
            if not ready.any():
                continue
            i, k = np.nonzero(ready)
            actual = windows.values[r[i], index[i, k], :]  # (hits, metrics)
            issued.done[i, k] = True
            fresh = np.zeros(len(BANDS), bool)
            fresh[_BAND_OF[k]] = True
            self._origins += fresh & ~issued.bands
            issued.bands |= fresh
            self._add(issued, i, k, actual.astype(np.float64))

    def _add(self, issued: _Issued, i: np.ndarray, k: np.ndarray, actual: np.ndarray) -> None:
        q = issued.quantiles[i, :, k, :].astype(np.float64)  # (hits, metrics, 3)
        median, spread = issued.climate[i, :, 0], np.maximum(issued.climate[i, :, 1], 1e-6)
        climate = median[..., None] + spread[..., None] * np.array([-Z90, 0.0, Z90])
        scale = spread  # per server, so busy and idle servers weigh alike
        model = _pinball(actual, q) / scale
        naive = _pinball(actual, climate) / scale
        covered = ((actual >= q[..., 0]) & (actual <= q[..., 2])).astype(float)
        valid = np.isfinite(actual) & np.isfinite(model) & np.isfinite(naive)
        parts = np.stack(
            [valid.astype(float), np.where(valid, model, 0), np.where(valid, naive, 0), covered * valid], -1
        )
        assert self._fleet is not None
        np.add.at(self._fleet.values, _BAND_OF[k], parts)
        for hit, server in enumerate(issued.servers[j] for j in i):
            sums = self._servers.setdefault(server, _Sums(np.zeros_like(self._fleet.values)))
            sums.values[_BAND_OF[k[hit]]] += parts[hit]

    def _check_inputs(self, windows: Any) -> None:
        if self.reference.inputs is None:
            return
        recent = windows.last_steps(WINDOW_STEPS)
        full = windows.lengths >= WINDOW_STEPS
        with np.errstate(all="ignore"):
            means, sds = np.nanmean(recent, axis=1), np.nanstd(recent, axis=1, ddof=1)
        out = self.reference.inputs.out(windows.profiles, means, sds, self.targets) & full[:, None]
        self._input_checked = int(full.sum())
        self._inputs = {
            s: [m for m, o in zip(self.targets, row, strict=True) if o]
            for s, row in zip(windows.servers, out, strict=True)
            if row.sum() >= METRICS_OUT * len(self.targets)
        }

    def report(self) -> dict[str, Any]:
        """Return the ``GET /drift/status`` document: the state, its rule, fleet and worst servers."""
        ratios = self._server_ratios()
        median = _nanreduce(np.nanmedian, ratios, axis=0)  # (bands, metrics)
        fleet = _band_figures(self._fleet.values, self.targets, median) if self._fleet is not None else {}
        share = len(self._inputs) / self._input_checked if self._input_checked else 0.0
        expected = self.reference.accuracy or {}
        enough = {b for b, n in zip(BANDS, self._origins, strict=True) if n >= MIN_ORIGINS}
        failing = [
            f"{m} {b}: {why}"
            for b, per in fleet.items()
            if b in enough
            for m, f in per.items()
            if (why := _failing(f, expected.get(b, {}).get(m)))
        ]
        state = _state(failing, share, self._input_checked > 0, fleet)
        return {
            "state": state,
            "reasons": failing
            + ([f"{share:.0%} of servers have inputs unlike training"] if share >= SHIFTED_SHARE else []),
            "rule": RULE,
            "inputs": {
                "checked": self.reference.inputs is not None,
                "servers_checked": self._input_checked,
                "servers_unlike_training": len(self._inputs),
                "share": round(share, 4),
                "servers": dict(sorted(self._inputs.items())[:50]),
            },
            "accuracy": fleet,
            "accuracy_reference": "validation" if self.reference.accuracy else "absolute limits",
            "servers": self._worst_servers(ratios),
        }

    def _server_ratios(self) -> np.ndarray | None:
        """``(servers, bands, metrics)``: each server's loss ratio (NaN under one score), in ``_servers`` order.

        The fleet's ratio is the median of these, not a ratio of sums: a server whose history
        barely moves (a climatological band a hair wide) would otherwise outweigh the rest.
        """
        if not self._servers:
            return None
        sums = np.stack([s.values for s in self._servers.values()])  # (servers, bands, metrics, 4)
        with np.errstate(all="ignore"):
            return np.where((sums[..., 0] >= 1.0) & (sums[..., 2] > 0), sums[..., 1] / sums[..., 2], np.nan)

    def _worst_servers(self, ratios: np.ndarray | None, n: int = 20) -> list[dict[str, Any]]:
        """The ``n`` servers whose worst metric and band (with enough scores of its own) loses most to climatology."""
        if ratios is None:
            return []
        weights = np.stack([s.values[..., 0] for s in self._servers.values()])  # (servers, bands, metrics)
        listed = np.where(weights >= MIN_SERVER_WEIGHT, ratios, np.nan)
        flat = np.nan_to_num(listed, nan=-np.inf).reshape(len(listed), -1)
        where, worst = flat.argmax(axis=1), flat.max(axis=1)
        order = [i for i in np.argsort(-worst) if np.isfinite(worst[i])][:n]
        names, bands, m = list(self._servers), list(BANDS), len(self.targets)
        return [
            {
                "server": names[i],
                "worst_ratio": round(float(worst[i]), 4),
                "worst": f"{self.targets[where[i] % m]} {bands[where[i] // m]}",
                "inputs_unlike": self._inputs.get(names[i], []),
            }
            for i in order
        ]


def _nanreduce(reduce: Any, values: np.ndarray | None, axis: Any) -> np.ndarray | None:
    """``reduce`` (a NaN-skipping numpy reduction) over ``axis``; ``None`` when nothing is finite."""
    if values is None or not np.isfinite(values).any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a slice with no score yet stays NaN
        return reduce(values, axis=axis)


RULE = (
    f"no_longer_fits: over the last ~{HALF_LIFE_STEPS * c.STEP_SECONDS // 3600} h (half-life), with >= "
    f"{MIN_WEIGHT:g} scores from >= {MIN_ORIGINS} forecasts, some metric and horizon band's pinball loss "
    f"relative to a climatological band's reached max({MAX_RATIO:g}, {RATIO_FACTOR:g}x its value on the validation "
    f"period), or its p10-p90 coverage fell under min({MIN_COVERAGE:.0%}, its validation value - "
    f"{COVERAGE_DROP:.0%}) (without a validation reference: ratio >= {MAX_RATIO:g} or coverage < "
    f"{MIN_COVERAGE:.0%}); inputs_shifted: >= {SHIFTED_SHARE:.0%} of servers have half or more of their metrics' "
    f"2-h mean or spread outside the training windows' central 99.8 % for their profile"
)


def _pinball(actual: np.ndarray, q: np.ndarray) -> np.ndarray:
    diff = actual[..., None] - q
    return np.mean(np.maximum(_TAUS * diff, (_TAUS - 1) * diff), axis=-1)


def _band_figures(
    values: np.ndarray, targets: Sequence[str], ratios: np.ndarray | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for b, band in enumerate(BANDS):
        per: dict[str, dict[str, Any]] = {}
        for j, metric in enumerate(targets):
            w, model, naive, covered = values[b, j]
            enough = w >= 1e-9 and naive > 0
            ratio = float(ratios[b, j]) if ratios is not None else model / naive if enough else np.nan
            per[metric] = {
                "scores": round(float(w), 2),
                "pinball": round(model / w, 4) if enough else None,
                "ratio": round(ratio, 4) if enough and np.isfinite(ratio) else None,
                "coverage": round(covered / w, 4) if enough else None,
            }
        out[band] = per
    return out


def _failing(figures: Mapping[str, Any], expected: Mapping[str, Any] | None) -> str | None:
    """Say how one metric and band fails its limits (``None``: it holds or has too few scores)."""
    if figures["scores"] < MIN_WEIGHT or figures["ratio"] is None:
        return None
    ratio, coverage = figures["ratio"], figures["coverage"]
    if expected is not None and expected.get("ratio") is not None:
        if ratio >= max(MAX_RATIO, RATIO_FACTOR * expected["ratio"]):
            return f"loss {ratio:.2f}x climatology's (validation: {expected['ratio']:.2f}x)"
        if coverage < min(MIN_COVERAGE, expected["coverage"] - COVERAGE_DROP):
            return f"p10-p90 coverage {coverage:.0%} (validation: {expected['coverage']:.0%})"
        return None
    if ratio >= MAX_RATIO:
        return f"loss {ratio:.2f}x climatology's"
    if coverage < MIN_COVERAGE:
        return f"p10-p90 coverage {coverage:.0%}"
    return None


def _state(failing: list[str], share: float, checked: bool, fleet: Mapping[str, Any]) -> str:
    if failing:
        return "no_longer_fits"
    if share >= SHIFTED_SHARE:
        return "inputs_shifted"
    scored = any(f["scores"] >= MIN_WEIGHT for per in fleet.values() for f in per.values())
    return "fits" if scored or checked else "warming_up"
