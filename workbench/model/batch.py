"""The TFT's input tensors assembled from window arrays, as ``TimeSeriesDataSet`` and its collate give them.

One function builds what pytorch-forecasting's dataset ``__getitem__`` and collate function
produce from a :class:`~workbench.model.dataset.DatasetSpec`, for training batches (the
decoder's true targets known) and for forecasts (placeholders in their place, as
:func:`workbench.features.with_future` writes them): per-window ``EncoderNormalizer`` scaling
of each target, the standardised window centre and scale as static reals, the encoder length,
the relative time index, the calendar covariates of every step and the profile code, with
encoders left-aligned and zero-padded at the end to the longest in the batch. Tests hold it
equal to the dataset path, tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from workbench import contract as c
from workbench.features import KNOWN_REALS, known_covariates
from workbench.model.dataset import DatasetSpec

_EPS = float(torch.finfo(torch.float32).eps)
WEEK_STEPS = 7 * 86_400 // c.STEP_SECONDS  # every calendar covariate repeats weekly


@dataclass
class Assembled:
    """Network inputs of a batch, as numpy arrays (see :func:`assemble`).

    Attributes:
        encoder_cont: ``(B, L, R)`` real inputs of the encoder steps, zero past each length.
        decoder_cont: ``(B, H, R)`` real inputs of the decoder steps.
        encoder_cat: ``(B, L, 1)`` profile codes, zero past each length.
        decoder_cat: ``(B, H, 1)`` profile codes.
        center: ``(B, M)`` per-window target centre.
        scale: ``(B, M)`` per-window target scale.
    """

    encoder_cont: np.ndarray
    decoder_cont: np.ndarray
    encoder_cat: np.ndarray
    decoder_cat: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    def network_inputs(self, lengths: np.ndarray, device: torch.device | str = "cpu") -> dict[str, object]:
        """Return the tensors the network's ``forward`` reads, on ``device``."""
        b, h = self.decoder_cont.shape[:2]
        m = self.center.shape[1]
        scales = [torch.from_numpy(np.stack([self.center[:, j], self.scale[:, j]], axis=1)) for j in range(m)]
        return {
            "encoder_cat": torch.from_numpy(self.encoder_cat).to(device),
            "decoder_cat": torch.from_numpy(self.decoder_cat).to(device),
            "encoder_cont": torch.from_numpy(self.encoder_cont).to(device),
            "decoder_cont": torch.from_numpy(self.decoder_cont).to(device),
            "encoder_lengths": torch.as_tensor(lengths, dtype=torch.long).to(device),
            "decoder_lengths": torch.full((b,), h, dtype=torch.long, device=device),
            "target_scale": [s.to(device) for s in scales] if m > 1 else scales[0].to(device),
        }


@cache
def calendar_table(names: tuple[str, ...] = KNOWN_REALS) -> np.ndarray:
    """Return the calendar covariates of one week of steps, ``(WEEK_STEPS, len(names))`` float32.

    Row ``i`` holds the covariates of every global step ``t`` with ``t % WEEK_STEPS == i``:
    the covariates are exactly periodic, so a lookup gives the bits :func:`known_covariates` gives.
    """
    values = known_covariates(np.arange(WEEK_STEPS))
    table = np.stack([values[n] for n in names], axis=1).astype(np.float32)
    table.setflags(write=False)
    return table


def assemble(
    encoder: np.ndarray,
    lengths: np.ndarray,
    first_step: np.ndarray,
    profile_codes: np.ndarray,
    spec: DatasetSpec,
    x_reals: Sequence[str],
    decoder: np.ndarray | None = None,
) -> Assembled:
    """Build the network's inputs for a batch of windows.

    Args:
        encoder: ``(B, L, M)`` float32 target values, left-aligned; row ``i`` is read up to
            ``lengths[i]`` and ``L`` is the longest length.
        lengths: ``(B,)`` encoder lengths.
        first_step: ``(B,)`` global step index of each encoder's first step.
        profile_codes: ``(B,)`` codes of the ``profile`` embedding.
        spec: The dataset spec.
        x_reals: The network's real inputs, in order (``hparams["x_reals"]``).
        decoder: ``(B, H, M)`` the decoder's true targets (training and validation); ``None``
            when forecasting, where the last observed value stands in for them as placeholder
            (the network never reads the decoder's targets).
    """
    b, length, _ = encoder.shape
    h = spec.horizon
    lengths = np.asarray(lengths, dtype=np.int64)
    mask = np.arange(length)[None, :] < lengths[:, None]
    center, scale = encoder_moments(encoder, lengths)
    if decoder is None:
        decoder = np.repeat(encoder[np.arange(b), lengths - 1][:, None, :], h, axis=1)

    # Filled one input at a time in (input, window, step) order, where each write is contiguous,
    # and transposed once at the end: writing strided columns of a (B, L, R) array was a third slower.
    enc = np.empty((len(x_reals), b, length), dtype=np.float32)
    dec = np.empty((len(x_reals), b, h), dtype=np.float32)
    calendar = calendar_table()
    enc_steps = (first_step[:, None] + np.arange(length)[None, :]) % WEEK_STEPS
    dec_steps = (first_step[:, None] + lengths[:, None] + np.arange(h)[None, :]) % WEEK_STEPS
    max_enc = np.float32(spec.max_encoder_length)
    for k, name in enumerate(x_reals):
        if name == "encoder_length":
            feature = ((lengths - 0.5 * spec.max_encoder_length) / spec.max_encoder_length * 2.0).astype(np.float32)
            enc[k], dec[k] = feature[:, None], feature[:, None]
        elif name == "relative_time_idx":  # float32 arithmetic, as the dataset computes it
            enc[k] = (np.arange(length, dtype=np.float32)[None, :] - lengths[:, None].astype(np.float32)) / max_enc
            dec[k] = np.arange(h, dtype=np.float32)[None, :] / max_enc
        elif name in KNOWN_REALS:
            col = KNOWN_REALS.index(name)
            enc[k], dec[k] = calendar[enc_steps, col], calendar[dec_steps, col]
        elif name in spec.targets:
            j = spec.targets.index(name)
            enc[k] = (encoder[..., j] - center[:, None, j]) / scale[:, None, j]
            dec[k] = (decoder[..., j] - center[:, None, j]) / scale[:, None, j]
        elif name.endswith(("_center", "_scale")):
            target, kind = name.rsplit("_", 1)
            j = spec.targets.index(target)
            mean, std = spec.scale_moments[target][kind]
            moment = center[:, j] if kind == "center" else scale[:, j]
            # As sklearn's StandardScaler on float32: each in-place step rounds back to float32.
            shifted = (moment.astype(np.float64) - mean).astype(np.float32)
            enc[k] = dec[k] = (shifted.astype(np.float64) / std).astype(np.float32)[:, None]
        else:
            raise ValueError(f"the network expects an input {name!r} that is not built from windows")
    enc[:, ~mask] = 0.0
    codes = np.asarray(profile_codes, dtype=np.int64)
    return Assembled(
        encoder_cont=np.ascontiguousarray(enc.transpose(1, 2, 0)),
        decoder_cont=np.ascontiguousarray(dec.transpose(1, 2, 0)),
        encoder_cat=np.where(mask, codes[:, None], 0)[..., None],
        decoder_cat=np.broadcast_to(codes[:, None, None], (b, h, 1)).copy(),
        center=center,
        scale=scale,
    )


def encoder_moments(encoder: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window mean and unbiased standard deviation + eps, fitted as ``EncoderNormalizer`` does.

    Computed in float32 with torch over each window's own steps, one group per history length,
    so that the numbers match the dataset path to the last bit.

    Args:
        encoder: ``(B, L, M)`` float32 values, left-aligned.
        lengths: ``(B,)`` steps of each window to use.

    Returns:
        ``(B, M)`` centres and scales.
    """
    b, _, m = encoder.shape
    mean = np.empty((b, m), dtype=np.float32)
    std = np.empty((b, m), dtype=np.float32)
    for n in np.unique(lengths):
        rows = np.nonzero(lengths == n)[0]
        part = torch.from_numpy(np.ascontiguousarray(encoder[rows, :n].transpose(0, 2, 1)))  # (rows, M, n)
        mean[rows] = torch.mean(part, dim=-1).numpy()
        std[rows] = (torch.std(part, dim=-1) + _EPS).numpy()
    return mean, std
