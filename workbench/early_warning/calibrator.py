"""Incident probabilities learned from ground truth: logistic scores, isotonic maps, JSON storage.

For each window (30 min, 8 h) the event is *the server's metric is in an incident at some step
of the window*: an incident of which it is the primary metric has its onset at or before the
window's last step and its critical phase has not ended by the first. Per alerting metric, a
logistic regression (scikit-learn, L2) maps the :mod:`~workbench.early_warning.features` of
*every* alerting metric of the server (its *context*: an error storm announces itself in
latency first) to a score; a metric with too few positive examples uses a model of its own
features pooled over every metric. An
isotonic map of the score (monotone, fitted on the same validation fleet) turns it into a
probability. A server's probability combines its metrics as ``1 - prod(1 - p)`` and passes
through a second isotonic map fitted on servers, so that it too means what it says; the fleet's
figure is ``1 - prod(1 - p_server)`` (servers fail independently in the simulator).

Everything is stored as numbers in JSON (the ``incidents`` section of ``calibration.json``);
no estimator is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.early_warning.features import CLIP_LOW, FEATURES
from workbench.errors import BundleError, ConfigError

INCIDENTS_VERSION = 1
WINDOW_STEPS: Mapping[str, int] = {"30m": 6, "8h": 96}
MIN_POSITIVES = 40  # a metric with fewer positive examples uses the pooled model
POOLED = "*"
HEALTHY_RATE = "healthy_server_rate"  # record key: per window, a healthy server's observed incident rate
REGULARISATION = 1.0  # scikit-learn's C (inverse L2 strength) on standardised features


@dataclass(frozen=True)
class Logistic:
    """A standardised logistic score ``intercept + coef . (x - mean) / scale``.

    Attributes:
        mean: ``(F,)`` feature means.
        scale: ``(F,)`` feature standard deviations (1 where constant).
        coef: ``(F,)`` weights.
        intercept: Bias.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> Logistic:
        """Fit on ``(k, F)`` features and ``(k,)`` 0/1 labels (both classes must occur)."""
        from sklearn.linear_model import LogisticRegression  # fitting only: serving never imports scikit-learn

        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        model = LogisticRegression(C=REGULARISATION, max_iter=2000)
        model.fit((x - mean) / scale, y)
        return cls(mean, scale, model.coef_[0].copy(), float(model.intercept_[0]))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Return the log-odds of ``(..., F)`` features."""
        return self.intercept + ((x - self.mean) / self.scale) @ self.coef

    def to_json(self) -> dict[str, Any]:
        """Return the model as plain JSON data."""
        return {
            "mean": _round(self.mean),
            "scale": _round(self.scale),
            "coef": _round(self.coef),
            "intercept": round(self.intercept, 8),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], n_features: int) -> Logistic:
        """Read :meth:`to_json` output (raises ``KeyError``/``ValueError`` when malformed)."""
        arrays = [np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "coef")]
        if any(a.shape != (n_features,) for a in arrays) or not all(np.isfinite(a).all() for a in arrays):
            raise ValueError(f"logistic model needs {n_features} finite numbers per array")
        if not (arrays[1] > 0).all():
            raise ValueError("feature scales must be > 0")
        mean, scale, coef = arrays
        return cls(mean, scale, coef, float(data["intercept"]))


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing piecewise-linear map to [0, 1], flat beyond its knots.

    Attributes:
        x: Increasing knots.
        y: Non-decreasing values in [0, 1] at the knots.
    """

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, score: np.ndarray, y: np.ndarray) -> Isotonic:
        """Fit the map from ``score`` to the frequency of ``y`` (scikit-learn's isotonic regression)."""
        from sklearn.isotonic import IsotonicRegression  # fitting only: serving never imports scikit-learn

        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        model.fit(score, y)
        return cls(np.asarray(model.X_thresholds_, dtype=np.float64), np.asarray(model.y_thresholds_, np.float64))

    def __call__(self, score: np.ndarray) -> np.ndarray:
        """Return the probabilities of ``score``."""
        return np.interp(score, self.x, self.y)

    def to_json(self) -> dict[str, Any]:
        """Return the knots as plain JSON data."""
        return {"x": _round(self.x), "y": _round(self.y)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Isotonic:
        """Read :meth:`to_json` output, checking the map is monotone and within [0, 1]."""
        x, y = np.asarray(data["x"], dtype=np.float64), np.asarray(data["y"], dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size < 1:
            raise ValueError("isotonic map needs two equally long, non-empty lists")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("isotonic map holds a non-finite number")
        if (np.diff(x) < 0).any() or (np.diff(y) < 0).any() or y.min() < 0 or y.max() > 1:
            raise ValueError("isotonic map must be non-decreasing and within [0, 1]")
        return cls(x, y)


@dataclass(frozen=True)
class WindowModel:
    """The probability of an incident within one window, per metric and per server.

    Attributes:
        steps: Window length in steps.
        scores: Logistic score per metric over the features of every :attr:`context` metric,
            plus :data:`POOLED` over a metric's own features, for metrics without their own.
        metric_map: Isotonic map from a metric's score to its probability.
        server_map: Isotonic map from ``1 - prod(1 - p_metric)`` to the server's probability.
        context: The metrics whose features every per-metric score reads, in order.
    """

    steps: int
    scores: Mapping[str, Logistic]
    metric_map: Isotonic
    server_map: Isotonic
    context: tuple[str, ...] = ()

    def context_features(self, features: np.ndarray, metrics: Sequence[str]) -> np.ndarray:
        """Return ``(servers, len(context) * F)``: the context metrics' features side by side.

        A context metric the forecast lacks, or without a level, reads as far below its level.
        """
        index = {m: j for j, m in enumerate(metrics)}
        far = np.full(features.shape[::2], -CLIP_LOW)
        parts = [features[:, index[m]] if m in index else far for m in self.context]
        return np.nan_to_num(np.concatenate(parts, axis=1), nan=-CLIP_LOW) if parts else far[:, :0]

    def scores_of(self, features: np.ndarray, metrics: Sequence[str]) -> np.ndarray:
        """Return ``(servers, metrics)`` logistic scores; NaN where a metric has no level."""
        out = np.full(features.shape[:2], np.nan)
        context = self.context_features(features, metrics)
        for j, metric in enumerate(metrics):
            rows = ~np.isnan(features[:, j]).any(axis=-1)
            if not rows.any():
                continue
            if metric in self.scores and metric != POOLED:
                out[rows, j] = self.scores[metric].score(context[rows])
            else:
                out[rows, j] = self.scores[POOLED].score(features[rows, j])
        return out

    def metric_probability(self, features: np.ndarray, metrics: Sequence[str]) -> np.ndarray:
        """Return ``(servers, metrics)`` probabilities; 0 where a feature row is NaN (no level).

        Args:
            features: ``(servers, metrics, F)`` features.
            metrics: The metric of each column.
        """
        score = self.scores_of(features, metrics)
        known = ~np.isnan(score)
        out = np.zeros(score.shape)
        out[known] = self.metric_map(score[known])
        return out

    def server_probability(self, metric_probability: np.ndarray) -> np.ndarray:
        """Return ``(servers,)`` probabilities from :meth:`metric_probability`'s output."""
        return self.server_map(any_of(metric_probability, axis=1))


@dataclass(frozen=True)
class IncidentCalibration:
    """Calibrated incident probabilities for every window, with how they were fitted.

    Attributes:
        windows: :class:`WindowModel` per window name (``30m``, ``8h``).
        features: Feature names, in the order the models read them.
        alert: The calibrated alert rule's settings (``window``, ``threshold``, ...), if fitted.
        record: How the models were fitted (fleets, examples, scores), as JSON.
    """

    windows: Mapping[str, WindowModel]
    features: tuple[str, ...] = FEATURES
    alert: Mapping[str, Any] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)

    def predict(self, features: np.ndarray, metrics: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return metric ``(servers, metrics, W)`` and server ``(servers, W)`` probabilities per window.

        Windows are separate models; a longer window's probability is raised to the shorter
        one's where it falls below it (an incident within 30 min is one within 8 h).

        Args:
            features: ``(servers, metrics, F)`` features.
            metrics: The metric of each column.
        """
        windows = [self.windows[name] for name in WINDOW_STEPS]  # shortest first
        per_metric = [w.metric_probability(features, metrics) for w in windows]
        per_server = [w.server_probability(p) for w, p in zip(windows, per_metric, strict=True)]
        n, m = features.shape[:2]
        metric = np.maximum.accumulate(np.stack(per_metric, axis=-1).reshape(n, m, len(windows)), axis=-1)
        server = np.maximum.accumulate(np.stack(per_server, axis=-1).reshape(n, len(windows)), axis=-1)
        return metric, server

    def healthy_fleet_probability(self, servers: int) -> dict[str, float] | None:
        """Return per window the probability a healthy fleet of ``servers`` shows (None: not recorded).

        It is what a fleet of that size reads on an ordinary day, ``1 - (1 - r)^servers`` with ``r``
        a healthy validation server's observed rate: the reference a fleet figure is read against.
        """
        rates = self.record.get(HEALTHY_RATE)
        if not isinstance(rates, Mapping) or set(rates) != set(WINDOW_STEPS):
            return None
        r = np.clip(np.array([float(rates[w]) for w in WINDOW_STEPS]), 0.0, 1.0)
        if not np.isfinite(r).all():
            return None
        with np.errstate(divide="ignore"):
            p = -np.expm1(servers * np.log1p(-r))
        return dict(zip(WINDOW_STEPS, (float(v) for v in p), strict=True))

    def to_json(self) -> dict[str, Any]:
        """Return the ``incidents`` section of ``calibration.json``."""
        return {
            "version": INCIDENTS_VERSION,
            "features": list(self.features),
            "windows": {
                name: {
                    "steps": w.steps,
                    "context": list(w.context),
                    "scores": {m: s.to_json() for m, s in w.scores.items()},
                    "metric_map": w.metric_map.to_json(),
                    "server_map": w.server_map.to_json(),
                }
                for name, w in self.windows.items()
            },
            "alert": dict(self.alert),
            "record": dict(self.record),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IncidentCalibration:
        """Read :meth:`to_json` output.

        Raises:
            BundleError: when the section is malformed, of another version or for other features.
        """
        if data.get("version") != INCIDENTS_VERSION:
            raise BundleError(f"calibration.json incidents: version {data.get('version')!r}, "
                              f"this code reads {INCIDENTS_VERSION}")  # fmt: skip
        if tuple(data.get("features", ())) != FEATURES:
            raise BundleError(f"calibration.json incidents: features {data.get('features')!r}, this code computes "
                              f"{list(FEATURES)}")  # fmt: skip
        stored = data.get("windows")
        if not isinstance(stored, Mapping) or set(stored) != set(WINDOW_STEPS):
            found = sorted(stored) if isinstance(stored, Mapping) else stored
            raise BundleError(f"calibration.json incidents: needs a model per window {list(WINDOW_STEPS)}, got {found}")
        try:
            windows = {name: _window_from_json(stored[name]) for name in WINDOW_STEPS}
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"calibration.json incidents section is malformed: {exc!r}") from exc
        return cls(windows, FEATURES, dict(data.get("alert", {})), dict(data.get("record", {})))


def _window_from_json(data: Mapping[str, Any]) -> WindowModel:
    context = tuple(str(m) for m in data["context"])
    width = {POOLED: len(FEATURES)}
    scores = {m: Logistic.from_json(s, width.get(m, len(context) * len(FEATURES))) for m, s in data["scores"].items()}
    if POOLED not in scores:
        raise ValueError(f"no pooled model {POOLED!r}")
    steps = int(data["steps"])
    if steps < 1:
        raise ValueError(f"window steps must be >= 1, got {steps}")
    maps = Isotonic.from_json(data["metric_map"]), Isotonic.from_json(data["server_map"])
    return WindowModel(steps, scores, *maps, context)


def fit_window(
    features: np.ndarray,
    metrics: Sequence[str],
    labels: np.ndarray,
    steps: int,
) -> WindowModel:
    """Fit one window's models on validation examples.

    Args:
        features: ``(examples, metrics, F)`` features (one example = one server at one origin);
            rows of NaN are metrics without a level.
        metrics: The metric of each column.
        labels: ``(examples, metrics)`` 0/1: the metric was in an incident within the window.
        steps: Window length in steps.

    Raises:
        ConfigError: when there is no positive or no negative example at all.
    """
    usable = ~np.isnan(features).any(axis=-1)
    y_all = labels[usable].astype(np.int8)
    if y_all.min(initial=1) == y_all.max(initial=0):
        raise ConfigError("incident calibration needs both incidents and quiet examples; the fleet has one kind")
    context = tuple(m for j, m in enumerate(metrics) if usable[:, j].any())
    scores: dict[str, Logistic] = {POOLED: Logistic.fit(features[usable], y_all)}
    draft = WindowModel(steps, scores, _IDENTITY, _IDENTITY, context)
    wide = draft.context_features(features, metrics)
    for j, metric in enumerate(metrics):
        y = labels[usable[:, j], j]
        if y.sum() >= MIN_POSITIVES and (y == 0).sum() >= MIN_POSITIVES:
            scores[metric] = Logistic.fit(wide[usable[:, j]], y)
    raw = draft.scores_of(features, metrics)
    metric_map = Isotonic.fit(raw[usable], labels[usable])
    partial = WindowModel(steps, scores, metric_map, _IDENTITY, context)
    combined = partial.server_probability(partial.metric_probability(features, metrics))
    server_map = Isotonic.fit(combined, labels.max(axis=1))
    return WindowModel(steps, scores, metric_map, server_map, context)


_IDENTITY = Isotonic(np.array([0.0, 1.0]), np.array([0.0, 1.0]))


def any_of(p: np.ndarray, axis: int) -> np.ndarray:
    """Return ``1 - prod(1 - p)`` along ``axis`` (at least one of independent events), exact for tiny ``p``."""
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf gives exactly 1
        return -np.expm1(np.log1p(-p).sum(axis=axis))


def _round(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.round(np.asarray(a, dtype=np.float64), 8)]
