"""Build the TFT's input tensors straight from the engine's windows, as ``TimeSeriesDataSet`` would.

The windows are read from the ring buffers left-aligned (index 0 is the oldest step used);
:func:`workbench.model.batch.assemble` turns them into the tensors pytorch-forecasting's
predict path gives for the same history, with the horizon's future steps appended. The
equivalence test holds the two paths together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workbench import contract as c
from workbench.inference.window import Windows
from workbench.model.batch import assemble
from workbench.model.dataset import DatasetSpec


def build_inputs(windows: Windows, spec: DatasetSpec, hparams: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Return the network's input dict for a batch of windows.

    Args:
        windows: Left-aligned target values of each server (``values[..., j]`` is target ``j``).
        spec: The bundle's dataset spec.
        hparams: The network's constructor arguments (``x_reals`` order, profile labels).
        device: Where the tensors go.
    """
    labels: dict[str, int] = hparams["embedding_labels"][c.PROFILE]
    codes = np.array([labels[p] for p in windows.profiles], dtype=np.int64)
    first_step = windows.last_step - windows.lengths + 1
    parts = assemble(windows.values.astype(np.float32), windows.lengths, first_step, codes, spec, hparams["x_reals"])
    return parts.network_inputs(windows.lengths, device)
