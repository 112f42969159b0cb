"""A compiled CPU kernel for the TFT's gate-add-norm tail: ``LayerNorm(GLU(gated) + skip)``.

Every gated residual network and gate-add-norm block of the TFT ends with a GLU, a residual
addition and a layer norm. In torch these are three passes over the ``(rows, hidden)`` tensor,
with two intermediates; this kernel does one pass per row with the row in registers, and
releases the GIL.
"""

from __future__ import annotations

import numba
import numpy as np

from workbench.inference.fastmath import JIT, Array, sigmoid

_F = np.float32


@numba.njit(nogil=True, **JIT)
def glu_add_norm(gated: Array, skip: Array, gamma: Array, beta: Array, eps: float, out: Array) -> None:
    """Write ``LayerNorm(gated[:, :H] · sigmoid(gated[:, H:]) + skip)`` to ``out``.

    Args:
        gated: ``(rows, 2H)`` float32, the GLU's input.
        skip: ``(rows, H)`` float32, the residual.
        gamma: ``(H,)`` the layer norm's weight.
        beta: ``(H,)`` its bias.
        eps: Its epsilon.
        out: ``(rows, H)`` float32 (written; may be ``skip``).
    """
    rows, hidden = skip.shape
    inv_h = _F(1.0) / _F(hidden)
    eps32 = _F(eps)
    z = np.empty(hidden, np.float32)
    for r in range(rows):
        total = _F(0.0)
        for j in range(hidden):
            v = gated[r, j] * sigmoid(gated[r, hidden + j]) + skip[r, j]
            z[j] = v
            total += v
        mean = total * inv_h
        var = _F(0.0)
        for j in range(hidden):
            d = z[j] - mean
            z[j] = d
            var += d * d
        scale = _F(1.0) / np.sqrt(var * inv_h + eps32)
        for j in range(hidden):
            out[r, j] = z[j] * scale * gamma[j] + beta[j]
