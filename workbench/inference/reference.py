"""pytorch-forecasting's own predict path: the slow, obviously-right reference forecast."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import polars as pl

from workbench import contract as c
from workbench.features import TIME_IDX, to_model_frame, with_future
from workbench.forecast import Forecast, postprocess
from workbench.model.bundle import Bundle
from workbench.model.train import quiet_lightning


def history_lengths(model_frame: pd.DataFrame) -> pd.Series:
    """Return, per server, the steps from its first to its last observation."""
    g = model_frame.groupby(c.SERVER, sort=False)[TIME_IDX]
    return g.max() - g.min() + 1


def reference_forecast(bundle: Bundle, frame: pl.DataFrame, *, batch_size: int = 256) -> Forecast:
    """Forecast every server of ``frame`` through pytorch-forecasting's own predict path.

    This is the slow, obviously-right path: it rebuilds a ``TimeSeriesDataSet`` and lets
    ``model.predict`` run a Lightning trainer. It appends the horizon's future rows so that the
    forecast starts one step after each server's last observation.

    Args:
        bundle: A trained or loaded bundle.
        frame: A validated contract frame holding the bundle's targets.
        batch_size: Servers per network call.
    """
    spec = bundle.spec
    model_frame = to_model_frame(frame, spec.targets)
    model_frame = model_frame.groupby(c.SERVER, sort=False).tail(spec.max_encoder_length).reset_index(drop=True)
    lengths = history_lengths(model_frame)
    ready = lengths[lengths >= spec.min_encoder_length].index
    warming = {str(s): int(n) for s, n in lengths[lengths < spec.min_encoder_length].items()}
    model_frame = model_frame[model_frame[c.SERVER].isin(ready)]
    if model_frame.empty:
        spec = bundle.spec
        return Forecast.empty(spec.targets, spec.horizon, spec.min_encoder_length, warming)
    dataset = spec.build(with_future(model_frame, spec.horizon), predict=True)
    device = next(bundle.network.parameters()).device
    with warnings.catch_warnings(), quiet_lightning():
        warnings.filterwarnings("ignore", r".*does not have many workers.*")
        # The dataset's getitem scales each window's centre as an array, not as the named
        # one-column frame the stored scalers are named for (workbench.model.dataset).
        warnings.filterwarnings("ignore", r"X does not have valid feature names, but StandardScaler")
        warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        pred = bundle.network.predict(
            dataset,
            mode="quantiles",
            return_index=True,
            batch_size=batch_size,
            trainer_kwargs={"accelerator": device.type, "logger": False, "enable_progress_bar": False},
        )
    outputs = pred.output if isinstance(pred.output, list | tuple) else [pred.output]
    raw = np.stack([t.detach().cpu().numpy() for t in outputs], axis=1)  # (n, targets, h, 3)
    if bundle.calibration is not None:
        raw = bundle.calibration.apply(raw)
    index = pred.index.reset_index(drop=True)
    last = model_frame.groupby(c.SERVER, sort=False).tail(1).set_index(c.SERVER)
    servers = index[c.SERVER].astype(str).tolist()
    return Forecast(
        servers=servers,
        profiles=last.loc[servers, c.PROFILE].astype(str).tolist(),
        targets=spec.targets,
        last_step=index[TIME_IDX].to_numpy(dtype=np.int64) - 1,
        quantiles=postprocess(raw, spec.targets),
        current=last.loc[servers, list(spec.targets)].to_numpy(dtype=np.float64),
        warming_up=warming,
        min_history=spec.min_encoder_length,
    )


def scaled_difference(ours: Forecast, ref: Forecast, frame: pl.DataFrame, window: int) -> np.ndarray:
    """Return ``|ours - ref|`` in units of each server's window standard deviation (at least 1).

    The network forecasts in units of the window's scale and adds back its centre, so two
    float32 evaluations of the same function agree to ~1e-6 of that scale; in metric units a
    latency window with a large scale but a small forecast would hide that agreement.

    Args:
        ours: A forecast of the same servers and targets as ``ref``.
        ref: The reference forecast.
        frame: The contract frame both were made from.
        window: Steps of history the network read (the bundle's ``max_encoder_length``).
    """
    if ours.servers != ref.servers or ours.targets != ref.targets:
        raise ValueError("the two forecasts cover different servers or targets")
    recent = frame.sort(c.TIMESTAMP).group_by(c.SERVER, maintain_order=True).tail(window)
    scale = recent.group_by(c.SERVER).agg(pl.col(t).std() for t in ref.targets)
    order = pl.DataFrame({c.SERVER: ref.servers})
    sigma = order.join(scale, on=c.SERVER, how="left").select(ref.targets).to_numpy()
    sigma = np.maximum(np.nan_to_num(sigma, nan=1.0), 1.0)
    return np.abs(ours.quantiles - ref.quantiles) / sigma[:, :, None, None]
