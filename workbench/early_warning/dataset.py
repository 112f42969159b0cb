"""Warning features at many origins of a fleet, and the ground truth they are scored against.

A :class:`WarningSet` holds the :func:`~workbench.early_warning.features.warning_features` of
every server at every evaluated origin (NaN where a server had no forecast: warming up or
missing metrics). :meth:`WarningSet.labels` reads the simulator's ground truth: the label of
(origin ``t``, server, metric) for a window of ``H`` steps is 1 when an incident whose primary
metric it is has its critical phase ``[onset, end)`` overlapping the steps ``t+1 … t+H``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.early_warning.features import FEATURES, WarningFeatures


@dataclass(frozen=True, eq=False)
class WarningSet:
    """Features of a fleet over evaluated origins.

    Attributes:
        servers: Evaluated servers, in column order.
        metrics: Forecast metrics.
        origins: ``(T,)`` origin steps (global step indices).
        features: ``(T, servers, metrics, F)`` features; NaN where there was no forecast or the
            metric has no level.
    """

    servers: tuple[str, ...]
    metrics: tuple[str, ...]
    origins: np.ndarray
    features: np.ndarray

    @classmethod
    def stack(
        cls, servers: tuple[str, ...], metrics: tuple[str, ...], origins: list[int], parts: list[WarningFeatures]
    ) -> WarningSet:
        """Stack the features of each origin (one :class:`WarningFeatures` per origin) on the server list."""
        index = {s: i for i, s in enumerate(servers)}
        out = np.full((len(parts), len(servers), len(metrics), len(FEATURES)), np.nan)
        for k, part in enumerate(parts):
            out[k, [index[s] for s in part.servers]] = part.values
        return cls(servers, metrics, np.asarray(origins, dtype=np.int64), out)

    def labels(self, incidents: pl.DataFrame, window_steps: int) -> np.ndarray:
        """Return ``(T, servers, metrics)`` 0/1 labels of an incident within ``window_steps``.

        Args:
            incidents: Ground truth (:data:`workbench.simulator.GROUND_TRUTH_SCHEMA`); incidents
                without an onset in the data never count.
            window_steps: Window length in steps.
        """
        out = np.zeros(self.features.shape[:3], dtype=np.int8)
        server_of = {s: i for i, s in enumerate(self.servers)}
        metric_of = {m: j for j, m in enumerate(self.metrics)}
        rows = incidents.filter(
            pl.col(c.SERVER).is_in(list(self.servers))
            & pl.col("metric").is_in(list(self.metrics))
            & pl.col("onset").is_not_null()
        ).select(
            c.SERVER,
            "metric",
            (pl.col("onset").dt.epoch("s") // c.STEP_SECONDS).alias("onset"),
            (pl.col("end").dt.epoch("s") // c.STEP_SECONDS).alias("end"),
        )
        for server, metric, onset, end in rows.iter_rows():
            # origins t with onset <= t + H and end - 1 >= t + 1
            lo, hi = np.searchsorted(self.origins, [onset - window_steps, end - 1])
            out[lo:hi, server_of[server], metric_of[metric]] = 1
        return out

    def examples(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(examples, metrics, F)`` features and ``(examples, metrics)`` labels of forecast servers."""
        seen = ~np.isnan(self.features).all(axis=(2, 3))  # (T, servers): the server had a forecast
        return self.features[seen], labels[seen]
