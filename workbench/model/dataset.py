"""The recipe of the network's inputs, as plain JSON, and the ``TimeSeriesDataSet`` built from it.

pytorch-forecasting keeps its encoders and scalers as Python objects and would pickle them. Here
every one of them is either stateless or fitted from numbers this spec stores, so that training
and loading build the dataset through the same function and a bundle needs no pickle:

* targets: one ``EncoderNormalizer`` each, fitted per window on its own history, so no server
  statistic is learnt and an unseen server is forecast through the same path as a known one;
* the per-window target centre and scale (static inputs): ``StandardScaler`` with stored moments;
* calendar covariates, ``relative_time_idx``, ``encoder_length``: already in [-1, 1], unscaled;
* ``profile``: labels fixed by the contract, not by the training data;
* ``server_name``: the group id only, never a model input; it is re-encoded for any data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data import EncoderNormalizer, MultiNormalizer, NaNLabelEncoder
from sklearn.preprocessing import StandardScaler

from workbench import contract as c
from workbench.errors import BundleError
from workbench.features import KNOWN_REALS, TIME_IDX
from workbench.model.config import TrainConfig

SPEC_VERSION = 1


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to rebuild the model's dataset; stored as ``dataset.json``.

    Attributes:
        targets: Target metrics, in output order.
        max_encoder_length: Longest history the network reads.
        min_encoder_length: Shortest history a forecast is made from.
        horizon: Forecast steps.
        randomize_length: Whether training samples shortened histories.
        scale_moments: Per target, mean and standard deviation of the per-window centre and
            scale, used to standardise those two static inputs.
        known_reals: Calendar covariates.
        profiles: Labels of the ``profile`` embedding.
    """

    targets: tuple[str, ...]
    max_encoder_length: int
    min_encoder_length: int
    horizon: int
    randomize_length: bool
    scale_moments: dict[str, dict[str, tuple[float, float]]]
    known_reals: tuple[str, ...] = KNOWN_REALS
    profiles: tuple[str, ...] = c.PROFILES

    @classmethod
    def fit(cls, model_frame: pd.DataFrame, config: TrainConfig) -> DatasetSpec:
        """Derive the spec from training data: only the moments of per-window centre and scale."""
        window = config.max_encoder_length
        moments: dict[str, dict[str, tuple[float, float]]] = {}
        grouped = model_frame.groupby(c.SERVER, sort=False)
        for t in config.targets:
            center = grouped[t].transform(lambda s: s.rolling(window, min_periods=1).mean())
            scale = grouped[t].transform(lambda s: s.rolling(window, min_periods=2).std()).dropna()
            moments[t] = {"center": _moments(center.to_numpy()), "scale": _moments(scale.to_numpy())}
        return cls(
            targets=tuple(config.targets),
            max_encoder_length=config.max_encoder_length,
            min_encoder_length=config.min_encoder_length,
            horizon=config.horizon,
            randomize_length=config.randomize_length,
            scale_moments=moments,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the spec as plain JSON data."""
        return {
            "spec_version": SPEC_VERSION,
            "targets": list(self.targets),
            "max_encoder_length": self.max_encoder_length,
            "min_encoder_length": self.min_encoder_length,
            "horizon": self.horizon,
            "randomize_length": self.randomize_length,
            "scale_moments": {t: {k: list(v) for k, v in m.items()} for t, m in self.scale_moments.items()},
            "known_reals": list(self.known_reals),
            "profiles": list(self.profiles),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetSpec:
        """Rebuild a spec written by :meth:`to_json`."""
        if data.get("spec_version") != SPEC_VERSION:
            raise BundleError(
                f"dataset.json: spec_version {data.get('spec_version')!r}, this code reads {SPEC_VERSION}"
            )
        try:
            moments = {
                t: {k: (float(v[0]), float(v[1])) for k, v in m.items()} for t, m in data["scale_moments"].items()
            }
            return cls(
                targets=tuple(data["targets"]),
                max_encoder_length=int(data["max_encoder_length"]),
                min_encoder_length=int(data["min_encoder_length"]),
                horizon=int(data["horizon"]),
                randomize_length=bool(data["randomize_length"]),
                scale_moments=moments,
                known_reals=tuple(data["known_reals"]),
                profiles=tuple(data["profiles"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"dataset.json is malformed: {exc!r}") from exc

    def target_normalizer(self) -> MultiNormalizer | EncoderNormalizer:
        """Return the per-window target normalizer (also the network's output transformer)."""
        if len(self.targets) == 1:  # pytorch-forecasting's multi-target path breaks on one target
            return EncoderNormalizer(method="standard")
        return MultiNormalizer([EncoderNormalizer(method="standard") for _ in self.targets])

    def dataset_kwargs(self, *, train: bool) -> dict[str, Any]:
        """Return the ``TimeSeriesDataSet`` keyword arguments this spec stands for."""
        scalers: dict[str, StandardScaler | None] = dict.fromkeys(
            (*self.known_reals, "relative_time_idx", "encoder_length")
        )
        for t in self.targets:
            for kind in ("center", "scale"):
                scalers[f"{t}_{kind}"] = _fitted_scaler(f"{t}_{kind}", *self.scale_moments[t][kind])
        profile_encoder = NaNLabelEncoder(add_nan=False).fit(pd.Series(self.profiles))
        return {
            "time_idx": TIME_IDX,
            "target": list(self.targets) if len(self.targets) > 1 else self.targets[0],
            "group_ids": [c.SERVER],
            "max_encoder_length": self.max_encoder_length,
            "min_encoder_length": self.min_encoder_length,
            "max_prediction_length": self.horizon,
            "min_prediction_length": self.horizon,
            "static_categoricals": [c.PROFILE],
            "time_varying_known_reals": list(self.known_reals),
            "time_varying_unknown_reals": list(self.targets),
            "target_normalizer": self.target_normalizer(),
            "categorical_encoders": {c.PROFILE: profile_encoder},
            "scalers": scalers,
            "add_relative_time_idx": True,
            "add_target_scales": True,
            "add_encoder_length": True,
            "allow_missing_timesteps": True,
            "randomize_length": True if (train and self.randomize_length) else None,
        }

    def build(self, model_frame: pd.DataFrame, *, train: bool = False, predict: bool = False, **kwargs: Any) -> Any:
        """Build a ``TimeSeriesDataSet`` on ``model_frame``.

        Args:
            model_frame: Output of :func:`workbench.features.to_model_frame` (and ``with_future``
                when ``predict``).
            train: Randomise history lengths (training only).
            predict: One sample per server whose decoder is its last ``horizon`` rows.
            **kwargs: Passed on, e.g. ``min_prediction_idx`` for a validation split.
        """
        params = self.dataset_kwargs(train=train) | kwargs
        if predict:
            return TimeSeriesDataSet.from_parameters(params, model_frame, predict=True, stop_randomization=True)
        return TimeSeriesDataSet(model_frame, **params)


def _moments(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    std = float(values.std())
    return float(values.mean()), std if std > 1e-12 else 1.0


def _fitted_scaler(column: str, mean: float, std: float) -> StandardScaler:
    scaler = StandardScaler()
    # pytorch-forecasting transforms a one-column frame named after the column: naming the
    # feature as a fit on that frame would keeps sklearn from warning on every transform.
    scaler.feature_names_in_ = np.array([column], dtype=object)
    scaler.mean_ = np.array([mean])
    scaler.var_ = np.array([std * std])
    scaler.scale_ = np.array([std])
    scaler.n_features_in_ = 1
    scaler.n_samples_seen_ = 1
    return scaler
