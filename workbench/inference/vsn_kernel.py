"""A compiled CPU kernel for the fused variable selection network (numba, no Python per step).

The torch path of :class:`~workbench.inference.fused_vsn.FusedVariableSelection` runs a few
hundred small tensor operations per chunk of servers; each pass over its ``(hidden, rows)``
intermediates costs memory traffic and interpreter time, and the interpreter time holds the
GIL, so batches in parallel threads wait on each other. This kernel computes the same function
for a block of rows at a time with every intermediate in L1 cache, and releases the GIL.

The functions are the fused module's: per row, the variable weights (an ELU GRN over the ``V``
scalars plus the per-server context, layer norms, a softmax), then the weighted sum of each
own variable's collapsed GRN and of each time-only variable's precomputed table row, with the
vectorisable ``sigmoid``, ``elu`` and ``exp`` of :mod:`workbench.inference.fastmath`.
"""

from __future__ import annotations

import numba
import numpy as np

from workbench.inference.fastmath import JIT as _JIT
from workbench.inference.fastmath import Array, Params, elu, exp, sigmoid

_F = np.float32


@numba.njit(inline="always", **_JIT)
def _norm_columns(
    z: Array, features: int, n: int, gamma: Array, beta: Array, eps: float, mean: Array, var: Array
) -> None:
    """Layer-normalise the first ``n`` columns of ``z[:features]`` in place (two-pass, like torch)."""
    inv = _F(1.0) / _F(features)
    for r in range(n):
        mean[r] = _F(0.0)
        var[r] = _F(0.0)
    for j in range(features):
        for r in range(n):
            mean[r] += z[j, r]
    for r in range(n):
        mean[r] *= inv
    for j in range(features):
        for r in range(n):
            d = z[j, r] - mean[r]
            z[j, r] = d
            var[r] += d * d
    for r in range(n):
        var[r] = _F(1.0) / np.sqrt(var[r] * inv + eps)
    for j in range(features):
        g, b = gamma[j], beta[j]
        for r in range(n):
            z[j, r] = z[j, r] * var[r] * g + b


@numba.njit(inline="always", **_JIT)
def _weights_block(
    x: Array,
    n: int,
    ctx: Array,
    wp: Params,
    wn: Params,
    w: Array,
    pre: Array,
    tmp: Array,
    res: Array,
    mean: Array,
    var: Array,
) -> None:
    """Softmax variable weights ``w[:V, :n]`` of the values ``x[:V, :n]`` of one server."""
    a, d, g, gb, rr, r0 = wp
    eps_res, eps_out = wn[4], wn[5]
    n_vars, hidden = a.shape
    for i in range(hidden):
        base = d[i] + ctx[i]
        for r in range(n):
            pre[i, r] = base
        for v in range(n_vars):
            c = a[v, i]
            for r in range(n):
                pre[i, r] += c * x[v, r]
        for r in range(n):
            pre[i, r] = elu(pre[i, r])
    for j in range(n_vars):  # the GLU: value row j, gate row V + j
        for r in range(n):
            w[j, r] = gb[j]
            tmp[r] = gb[n_vars + j]
        for i in range(hidden):
            cv, cg = g[j, i], g[n_vars + j, i]
            for r in range(n):
                w[j, r] += cv * pre[i, r]
                tmp[r] += cg * pre[i, r]
        for r in range(n):
            w[j, r] *= sigmoid(tmp[r])
    for j in range(n_vars):
        for r in range(n):
            res[j, r] = r0[j]
        for v in range(n_vars):
            c = rr[v, j]
            for r in range(n):
                res[j, r] += c * x[v, r]
    _norm_columns(res, n_vars, n, wn[0], wn[1], eps_res, mean, var)
    for j in range(n_vars):
        for r in range(n):
            w[j, r] += res[j, r]
    _norm_columns(w, n_vars, n, wn[2], wn[3], eps_out, mean, var)
    for r in range(n):
        mean[r] = w[0, r]
    for j in range(1, n_vars):
        for r in range(n):
            mean[r] = max(mean[r], w[j, r])
    for r in range(n):
        var[r] = _F(0.0)
    for j in range(n_vars):
        for r in range(n):
            e = exp(w[j, r] - mean[r])
            w[j, r] = e
            var[r] += e
    for r in range(n):
        var[r] = _F(1.0) / var[r]
    for j in range(n_vars):
        for r in range(n):
            w[j, r] *= var[r]


@numba.njit(inline="always", **_JIT)
def _own_block(
    k: int,
    x: Array,
    wt: Array,
    n: int,
    op: Params,
    acc: Array,
    h: Array,
    g: Array,
    mean: Array,
    var: Array,
    inv: Array,
    xi: Array,
) -> None:
    """Add ``wt · GRN_k(x)`` (own variable ``k``, collapsed) to ``acc[:, :n]``."""
    u, w, pq, lines, moments, gamma, beta, eps = op
    inner, hidden = u.shape[1], gamma.shape[1]
    for i in range(inner):
        wi, ui = w[k, i], u[k, i]
        for r in range(n):
            h[i, r] = elu(wi + ui * x[r])
    for j in range(2 * hidden):
        b0 = pq[k, j, inner]
        for r in range(n):
            g[j, r] = b0
        for i in range(inner):
            c = pq[k, j, i]
            for r in range(n):
                g[j, r] += c * h[i, r]
    m0, m1, m2 = moments[k, 0], moments[k, 1], moments[k, 2]
    for r in range(n):
        x64 = np.float64(x[r])
        scale = 1.0 / np.sqrt((x64 * m0 + m1) * x64 + m2)  # the residual's layer norm, in closed form
        inv[r] = _F(scale)
        xi[r] = _F(x64 * scale)
    for j in range(hidden):
        b, p, q = lines[k, 0, j], lines[k, 1, j], lines[k, 2, j]
        for r in range(n):
            g[j, r] = g[j, r] * sigmoid(g[hidden + j, r]) + b + p * xi[r] + q * inv[r]
    _norm_columns(g, hidden, n, gamma[k], beta[k], eps[k], mean, var)
    for j in range(hidden):
        for r in range(n):
            acc[j, r] += wt[r] * g[j, r]


@numba.njit(nogil=True, **_JIT)
def select(
    values: Array,
    context: Array,
    own: Array,
    op: Params,
    wp: Params,
    wn: Params,
    shared: Array,
    tables: Array,
    index: Array,
    out: Array,
    weights: Array,
    block: int,
) -> None:
    """Run the fused selection network on a batch.

    Args:
        values: ``(B, T, V)`` float32 inputs.
        context: ``(B, hidden_w)`` the weight GRN's projected static context per server (or zeros).
        own: Indices of the own (per-server) variables.
        op: Own variables' collapsed parameters (see ``FusedVariableSelection._kernel_params``).
        wp: The weight GRN's parameters.
        wn: The weight GRN's layer norms: weights, biases and eps.
        shared: Indices of the time-only variables.
        tables: ``tables[k, :, d]`` is time-only variable ``k``'s output for its ``d``-th distinct value.
        index: ``index[k, b, t]`` is the ``d`` of variable ``k``'s value at row ``(b, t)``.
        out: ``(B, T, H)`` selected embeddings (written).
        weights: ``(B, T, V)`` variable weights (written).
        block: Rows per block (its intermediates stay in L1/L2 cache).
    """
    n_batch, steps, n_vars = values.shape
    hidden = out.shape[2]
    two_h = 2 * hidden
    x = np.empty((n_vars, block), np.float32)
    w = np.empty((n_vars, block), np.float32)
    pre = np.empty((max(wp[0].shape[1], op[0].shape[1]), block), np.float32)
    g = np.empty((max(two_h, n_vars), block), np.float32)
    acc = np.empty((hidden, block), np.float32)
    tmp, mean, var = np.empty(block, np.float32), np.empty(block, np.float32), np.empty(block, np.float32)
    inv, xi = np.empty(block, np.float32), np.empty(block, np.float32)
    for b in range(n_batch):
        for lo in range(0, steps, block):
            n = min(block, steps - lo)
            for r in range(n):
                for v in range(n_vars):
                    x[v, r] = values[b, lo + r, v]
            _weights_block(x, n, context[b], wp, wn, w, pre, tmp, g, mean, var)
            for j in range(hidden):
                for r in range(n):
                    acc[j, r] = _F(0.0)
            for k in range(own.size):
                _own_block(k, x[own[k]], w[own[k]], n, op, acc, pre, g, mean, var, inv, xi)
            for k in range(shared.size):
                wk, at = w[shared[k]], index[k, b, lo : lo + n]
                for j in range(hidden):
                    table = tables[k, j]
                    for r in range(n):
                        acc[j, r] += wk[r] * table[at[r]]
            for r in range(n):
                for j in range(hidden):
                    out[b, lo + r, j] = acc[j, r]
                for v in range(n_vars):
                    weights[b, lo + r, v] = w[v, r]
