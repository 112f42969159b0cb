"""A compiled CPU kernel for the interpretable attention's core (numba, no Python per server).

:class:`~workbench.inference.speedups.FusedAttention` projects queries, keys and values with
torch; this kernel then takes, per server and query, every head's scores over the keys, their
softmax, and the product of the weights with the values the heads share, summed over heads.
One server's keys and values are transposed into scratch buffers that stay in cache, and the
GIL is released, so batches in parallel threads do not wait on each other.
"""

from __future__ import annotations

import numba
import numpy as np

from workbench.inference.fastmath import JIT, Array, exp

_F = np.float32


@numba.njit(nogil=True, **JIT)
def attend(queries: Array, keys: Array, values: Array, bias: Array, out: Array) -> None:
    """Write ``out[b, q] = Σ_heads softmax(queries[b, q, h] · keys[b, :, h]ᵀ + bias) · values[b]``.

    Args:
        queries: ``(B, Tq, H, d)`` float32, already scaled by ``1/√d``.
        keys: ``(B, Tk, H, d)`` float32.
        values: ``(B, Tk, d_v)`` float32 (shared by the heads).
        bias: ``(1, Tq, Tk)`` additive mask for every server, or ``(B, Tq, Tk)`` one per server.
        out: ``(B, Tq, d_v)`` float32 (written).
    """
    n_batch, n_queries, n_heads, d = queries.shape
    n_keys, d_v = keys.shape[1], values.shape[2]
    kt = np.empty((n_heads, d, n_keys), np.float32)
    vt = np.empty((d_v, n_keys), np.float32)
    scores = np.empty(n_keys, np.float32)
    shared = bias.shape[0] == 1
    for b in range(n_batch):
        for t in range(n_keys):
            for h in range(n_heads):
                for i in range(d):
                    kt[h, i, t] = keys[b, t, h, i]
            for j in range(d_v):
                vt[j, t] = values[b, t, j]
        mask = bias[0] if shared else bias[b]
        for q in range(n_queries):
            for j in range(d_v):
                out[b, q, j] = _F(0.0)
            for h in range(n_heads):
                for t in range(n_keys):
                    scores[t] = mask[q, t]
                for i in range(d):
                    c = queries[b, q, h, i]
                    for t in range(n_keys):
                        scores[t] += c * kt[h, i, t]
                top = scores[0]
                for t in range(1, n_keys):
                    top = max(top, scores[t])
                total = _F(0.0)
                for t in range(n_keys):
                    e = exp(scores[t] - top)
                    scores[t] = e
                    total += e
                inv = _F(1.0) / total
                for j in range(d_v):
                    acc = _F(0.0)
                    for t in range(n_keys):
                        acc += scores[t] * vt[j, t]
                    out[b, q, j] += acc * inv
