"""Build the TFT's input tensors straight from window arrays, as ``TimeSeriesDataSet`` would.

This reproduces, for prediction, what pytorch-forecasting's dataset ``__getitem__`` and
collate function produce from the bundle's :class:`~workbench.model.dataset.DatasetSpec`:
per-window ``EncoderNormalizer`` scaling of each target, the standardised window centre and
scale as static reals, the encoder length, the relative time index, the calendar covariates
of every encoder and decoder step, and the profile code. Encoders are left-aligned and padded
at the end, as the collate function does. The equivalence test holds the two paths together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workbench import contract as c
from workbench.features import known_covariates
from workbench.inference.window import Windows
from workbench.model.dataset import DatasetSpec

_EPS = float(torch.finfo(torch.float32).eps)


def build_inputs(windows: Windows, spec: DatasetSpec, hparams: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Return the network's input dict for a batch of windows.

    Args:
        windows: Left-aligned target values of each server (``values[..., j]`` is target ``j``).
        spec: The bundle's dataset spec.
        hparams: The network's constructor arguments (``x_reals`` order, profile labels).
        device: Where the tensors go.
    """
    x_reals: list[str] = hparams["x_reals"]
    y = windows.values.astype(np.float32)  # (B, L, M), as the dataset stores targets
    lengths = windows.lengths
    b, length, _ = y.shape
    h = spec.horizon
    mask = np.arange(length)[None, :] < lengths[:, None]
    center, scale = _encoder_moments(y, mask, lengths)  # (B, M)

    time_idx = (windows.last_step - lengths + 1)[:, None] + np.arange(length + h)[None, :]
    # Decoder steps come right after each server's own encoder, however long it is.
    dec_idx = windows.last_step[:, None] + 1 + np.arange(h)[None, :]
    enc_calendar = known_covariates(time_idx[:, :length])
    dec_calendar = known_covariates(dec_idx)
    rel = np.arange(length + h)[None, :] - lengths[:, None]
    enc_rel = rel[:, :length] / spec.max_encoder_length
    dec_rel = np.broadcast_to(np.arange(h)[None, :] / spec.max_encoder_length, (b, h))
    enc_len_feature = (lengths - 0.5 * spec.max_encoder_length) / spec.max_encoder_length * 2.0

    enc = np.zeros((b, length, len(x_reals)), dtype=np.float32)
    dec = np.zeros((b, h, len(x_reals)), dtype=np.float32)
    for k, name in enumerate(x_reals):
        if name == "encoder_length":
            enc[..., k], dec[..., k] = enc_len_feature[:, None], enc_len_feature[:, None]
        elif name == "relative_time_idx":
            enc[..., k], dec[..., k] = enc_rel, dec_rel
        elif name in enc_calendar:
            enc[..., k], dec[..., k] = enc_calendar[name], dec_calendar[name]
        elif name in spec.targets:  # the decoder never reads these: placeholders, as in the dataset
            j = spec.targets.index(name)
            enc[..., k] = (y[..., j] - center[:, None, j]) / scale[:, None, j]
            dec[..., k] = ((y[np.arange(b), lengths - 1, j] - center[:, j]) / scale[:, j])[:, None]
        elif name.endswith(("_center", "_scale")):
            target, kind = name.rsplit("_", 1)
            j = spec.targets.index(target)
            mean, std = spec.scale_moments[target][kind]
            moment = center[:, j] if kind == "center" else scale[:, j]
            # As sklearn's StandardScaler on float32: each in-place step rounds back to float32.
            shifted = (moment.astype(np.float64) - mean).astype(np.float32)
            enc[..., k] = dec[..., k] = (shifted.astype(np.float64) / std).astype(np.float32)[:, None]
        else:
            raise ValueError(f"the bundle's network expects an input {name!r} this engine does not build")
    enc[~mask] = 0.0

    labels: dict[str, int] = hparams["embedding_labels"][c.PROFILE]
    codes = np.array([labels[p] for p in windows.profiles], dtype=np.int64)
    enc_cat = np.where(mask, codes[:, None], 0)[..., None]
    tensor = torch.as_tensor
    return {
        "encoder_cat": tensor(enc_cat, device=device),
        "decoder_cat": tensor(np.broadcast_to(codes[:, None, None], (b, h, 1)).copy(), device=device),
        "encoder_cont": tensor(enc, device=device),
        "decoder_cont": tensor(dec, device=device),
        "encoder_lengths": tensor(lengths, dtype=torch.long, device=device),
        "decoder_lengths": torch.full((b,), h, dtype=torch.long, device=device),
        "target_scale": _target_scale(center, scale, spec, device),
    }


def _encoder_moments(y: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window mean and unbiased standard deviation + eps, fitted as ``EncoderNormalizer`` does.

    Computed in float32 with torch over each window's own steps, one group per history length,
    so that the numbers match the dataset path to the last bits.
    """
    b, _, m = y.shape
    mean = np.empty((b, m), dtype=np.float32)
    std = np.empty((b, m), dtype=np.float32)
    for n in np.unique(lengths):
        rows = np.nonzero(lengths == n)[0]
        part = torch.from_numpy(np.ascontiguousarray(y[rows, :n].transpose(0, 2, 1)))  # (rows, M, n)
        mean[rows] = torch.mean(part, dim=-1).numpy()
        std[rows] = (torch.std(part, dim=-1) + _EPS).numpy()
    return mean, std


def _target_scale(center: np.ndarray, scale: np.ndarray, spec: DatasetSpec, device: torch.device) -> Any:
    pairs = [
        torch.as_tensor(np.stack([center[:, j], scale[:, j]], axis=1), device=device) for j in range(len(spec.targets))
    ]
    return pairs if len(spec.targets) > 1 else pairs[0]
