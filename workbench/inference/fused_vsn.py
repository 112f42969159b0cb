"""A fused, algebraically collapsed variable selection network for real-valued TFT inputs.

Every input of a time-varying variable selection network is one scalar per step, and the
layers between that scalar and the first non-linearity are affine. So, per variable ``v`` with
prescaler ``e = a·x + b``:

* the GRN's ``fc1(e)`` is ``u·x + w`` (an outer product instead of a matrix product);
* its residual ``LayerNorm(gate · interpolate(e))`` is ``LayerNorm(p·x + q)``;
* its ``glu.fc(fc2(h))`` is one matrix product ``h·P + Q``;
* the selection weights' GRN reads the concatenated embeddings only through ``fc1`` and the
  residual interpolation, both affine in the ``V`` scalars: ``x·A + d`` and ``x·R + r``.

The static context enters as a per-server term instead of a per-step one. Each chunk of
servers is evaluated transposed, features along the first axis (``(hidden, rows)``): every
step, layer norms included, is then a long contiguous vector operation instead of a short
per-row one. Variables whose
values depend only on the time step (calendar covariates, the relative time index) are
evaluated once per distinct row of values and broadcast over the fleet. The collapsed
parameters are computed in float64 from the stock module's weights; the function is the same,
only rounding differs (the engine's equivalence test bounds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    VariableSelectionNetwork,
)
from torch import nn

from workbench.inference import vsn_kernel
from workbench.model.network import interpolation_matrix

SERVERS_PER_CHUNK = 16  # keeps the (variables, rows, hidden) intermediates in cache
KERNEL_BLOCK = 96  # rows per block of the compiled kernel: its intermediates stay in L1/L2


def applies(vsn: VariableSelectionNetwork) -> bool:
    """Whether every variable is a real with a ``Linear(1, s)`` prescaler and a context-free GRN."""
    names = list(vsn.input_sizes)
    if len(names) < 2 or set(vsn.prescalers) != set(names) or not hasattr(vsn, "flattened_grn"):
        return False
    grns = [vsn.single_variable_grns[n] for n in names]
    if not all(isinstance(g, GatedResidualNetwork) and g.context_size is None and is_unit_elu(g.elu) for g in grns):
        return False
    flat = vsn.flattened_grn
    return hasattr(flat, "resample_norm") and not flat.gate_norm.add_norm.trainable_add and is_unit_elu(flat.elu)


def elu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.elu`` with ``alpha=1``, computed as ``max(x, exp(min(x, 0)) - 1)``.

    For ``x > 0`` the second term is 0 and for ``x <= 0`` it is ``exp(x) - 1 >= x``, so this is the
    same function; on AVX2 CPUs it is faster than the stock kernel, and it differs from it by
    float rounding only (at most a few 1e-8).

    Args:
        x: Any float tensor (left unchanged).
        out: Where to write the result (default: a new tensor of ``x``'s shape).

    Returns:
        ``out`` or the new tensor.
    """
    negative = x.clamp(max=0).exp_().sub_(1)
    return torch.maximum(x, negative, out=negative if out is None else out)


def is_unit_elu(module: Any) -> bool:
    """Whether ``module`` is an ``nn.ELU`` with ``alpha=1`` (what :func:`elu` computes)."""
    return isinstance(module, nn.ELU) and module.alpha == 1.0


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.to(torch.float32).contiguous(), requires_grad=False)


def _gate(norm_module: Any) -> torch.Tensor:
    """The ``trainable_add`` gate of a ResampleNorm (``2·sigmoid(mask)``), or ones."""
    if getattr(norm_module, "trainable_add", False):
        return torch.sigmoid(_f64(norm_module.mask)) * 2.0
    return torch.ones_like(_f64(norm_module.norm.weight))


class _Variable(nn.Module):
    """One scalar variable's prescaler + GRN, collapsed."""

    def __init__(self, prescaler: nn.Linear, grn: GatedResidualNetwork) -> None:
        super().__init__()
        a, b = _f64(prescaler.weight[:, 0]), _f64(prescaler.bias)
        w1, c1 = _f64(grn.fc1.weight), _f64(grn.fc1.bias)
        w2, c2 = _f64(grn.fc2.weight), _f64(grn.fc2.bias)
        wg, cg = _f64(grn.gate_norm.glu.fc.weight), _f64(grn.gate_norm.glu.fc.bias)
        self.u, self.w = _param(w1 @ a), _param(w1 @ b + c1)
        self.PQ = _param(torch.cat([wg @ w2, (wg @ c2 + cg)[:, None]], dim=1))  # (2·hidden, inner + 1)
        if hasattr(grn, "resample_norm"):
            rn = grn.resample_norm
            m, gate = interpolation_matrix(grn.input_size, grn.output_size), _gate(rn)
            self.residual: _Line | _NormedLine = _NormedLine((a @ m) * gate, (b @ m) * gate, rn.norm)
        else:
            self.residual = _Line(a, b)
        self.out_norm = grn.gate_norm.add_norm.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map values ``(...)`` to the GRN output ``(..., hidden)``."""
        xe = x.unsqueeze(-1)
        hidden = elu(torch.addcmul(self.w, xe, self.u))
        weight, bias = self.PQ[:, :-1], self.PQ[:, -1]
        gated = F.glu(torch.addmm(bias, hidden.reshape(-1, hidden.size(-1)), weight.T), dim=-1)
        return self.out_norm(gated.reshape(*x.shape, -1).add_(self.residual(xe)))

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """Map values ``(rows,)`` to the GRN output transposed, ``(hidden, rows)``.

        Features along the first axis make every step a long, contiguous vector operation (the
        layer norm of 32 features per row is mostly per-row overhead in the row-wise kernel).
        """
        inner = self.u.numel()
        hidden = x.new_empty(inner + 1, x.numel())
        hidden[inner] = 1.0  # multiplies the bias column of PQ
        elu(torch.addcmul(self.w[:, None], self.u[:, None], x[None]), out=hidden[:inner])
        gated = torch.mm(self.PQ, hidden)
        half = gated.size(0) // 2
        z = torch.sigmoid_(gated[half:]).mul_(gated[:half])  # the GLU, in place
        return norm_columns(self.residual.add_columns(x, z), self.out_norm)


class _Line(nn.Module):
    """``p·x + q`` for a scalar ``x`` per row."""

    def __init__(self, p: torch.Tensor, q: torch.Tensor) -> None:
        super().__init__()
        self.p, self.q = _param(p), _param(q)

    def forward(self, xe: torch.Tensor) -> torch.Tensor:
        """Map ``(..., 1)`` values to ``(..., size)``."""
        return torch.addcmul(self.q, xe, self.p)

    def add_columns(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Add the line of values ``(rows,)`` to ``z`` ``(size, rows)`` in place."""
        return z.addcmul_(self.p[:, None], x[None]).add_(self.q[:, None])


class _NormedLine(nn.Module):
    """``LayerNorm(p·x + q)`` for a scalar ``x`` per row, in closed form.

    The row ``p·x + q`` has mean ``x·p̄ + q̄`` and variance ``a·x² + 2b·x + c`` (the moments of
    the centred ``p`` and ``q``), so the norm is ``(x·p' + q')/σ(x)`` scaled and shifted: the
    per-row work is one scalar square root instead of a reduction over the row. The scalar
    part runs in float64, where the quadratic cannot cancel badly.
    """

    def __init__(self, p: torch.Tensor, q: torch.Tensor, norm: nn.LayerNorm) -> None:
        super().__init__()
        pc, qc = p - p.mean(), q - q.mean()
        gamma = _f64(norm.weight) if norm.weight is not None else torch.ones_like(pc)
        self.moments = ((pc * pc).mean().item(), 2.0 * (pc * qc).mean().item(), (qc * qc).mean().item() + norm.eps)
        self.pg, self.qg = _param(pc * gamma), _param(qc * gamma)
        self.beta = _param(_f64(norm.bias) if norm.bias is not None else torch.zeros_like(pc))

    def forward(self, xe: torch.Tensor) -> torch.Tensor:
        """Map ``(..., 1)`` values to ``(..., size)``."""
        a, b, c = self.moments
        x64 = xe.double()
        inv = torch.rsqrt((x64 * a + b) * x64 + c)
        out = torch.addcmul(self.beta, (x64 * inv).float(), self.pg)
        return out.addcmul_(inv.float(), self.qg)

    def add_columns(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Add the normed line of values ``(rows,)`` to ``z`` ``(size, rows)`` in place."""
        a, b, c = self.moments
        x64 = x.double()
        inv = torch.rsqrt((x64 * a + b) * x64 + c)
        z.add_(self.beta[:, None]).addcmul_(self.pg[:, None], (x64 * inv).float()[None])
        return z.addcmul_(self.qg[:, None], inv.float()[None])


def norm_columns(z: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """Apply ``norm`` to every column of ``z`` ``(features, rows)``, in place.

    The same two-pass mean and variance as ``F.layer_norm``, as vector operations along the rows.

    Args:
        z: Features along the first axis; overwritten.
        norm: A ``LayerNorm`` over ``z.size(0)`` features.

    Returns:
        ``z``.
    """
    z.sub_(z.mean(dim=0))
    variance = torch.mean(z * z, dim=0)
    z.mul_(variance.add_(norm.eps).rsqrt_())
    if norm.weight is not None:
        z.mul_(norm.weight[:, None])
    if norm.bias is not None:
        z.add_(norm.bias[:, None])
    return z


class _Weights(nn.Module):
    """The variable-weight GRN of a selection network, reading the ``V`` scalars directly."""

    def __init__(self, vsn: VariableSelectionNetwork, names: list[str]) -> None:
        super().__init__()
        g = vsn.flattened_grn
        s = [vsn.prescalers[n].out_features for n in names]
        offsets = [sum(s[:i]) for i in range(len(s))]
        w1, m = _f64(g.fc1.weight), interpolation_matrix(g.input_size, g.output_size)
        a_rows, r_rows = [], []
        d, r = _f64(g.fc1.bias), torch.zeros(g.output_size, dtype=torch.float64)
        for name, lo, size in zip(names, offsets, s, strict=True):
            a, b = _f64(vsn.prescalers[name].weight[:, 0]), _f64(vsn.prescalers[name].bias)
            a_rows.append(w1[:, lo : lo + size] @ a)
            d = d + w1[:, lo : lo + size] @ b
            r_rows.append(a @ m[lo : lo + size])
            r = r + b @ m[lo : lo + size]
        gate = _gate(g.resample_norm)
        self.A, self.d = _param(torch.stack(a_rows)), _param(d)  # (V, hidden), (hidden,)
        self.R, self.r = _param(torch.stack(r_rows) * gate), _param(r * gate)  # (V, V), (V,)
        self.res_norm = g.resample_norm.norm
        self.context = getattr(g, "context", None)
        wg, w2 = _f64(g.gate_norm.glu.fc.weight), _f64(g.fc2.weight)
        self.G = _param(wg @ w2)  # fc2 then the gate's Linear: one product (no dropout at inference)
        self.g = _param(wg @ _f64(g.fc2.bias) + _f64(g.gate_norm.glu.fc.bias))
        self.out_norm = g.gate_norm.add_norm.norm

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, servers: int) -> torch.Tensor:
        """Softmax weights ``(V, rows)`` of values ``(V, rows)``, rows ordered server by server.

        ``context`` is ``(servers, 1, c)`` (per server) or ``(servers, steps, c)``.
        """
        pre = torch.addmm(self.d[:, None], self.A.T, x)
        if context is not None and self.context is not None:
            pre.view(pre.size(0), servers, -1).add_(self.context(context).permute(2, 0, 1))
        gated = torch.addmm(self.g[:, None], self.G, elu(pre))
        half = gated.size(0) // 2
        z = torch.sigmoid_(gated[half:]).mul_(gated[:half])
        residual = norm_columns(torch.addmm(self.r[:, None], self.R.T, x), self.res_norm)
        return torch.softmax(norm_columns(z.add_(residual), self.out_norm), dim=0)


class FusedVariableSelection(nn.Module):
    """Drop-in replacement of a real-input ``VariableSelectionNetwork`` for inference."""

    def __init__(self, vsn: VariableSelectionNetwork, shared: Sequence[str] = (), compiled: bool = True) -> None:
        super().__init__()
        self.names = list(vsn.input_sizes)
        self.shared = [i for i, n in enumerate(self.names) if n in shared]
        self.own = [i for i, n in enumerate(self.names) if n not in shared]
        self.variables = nn.ModuleList(_Variable(vsn.prescalers[n], vsn.single_variable_grns[n]) for n in self.names)
        self.weights = _Weights(vsn, self.names)
        self.hidden = int(vsn.hidden_size)
        self.compiled = compiled
        self._params: tuple[Any, ...] | None = None

    def forward(self, x: dict[str, torch.Tensor], context: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Return the selected embedding ``(b, T, hidden)`` and the variable weights ``(b, T, 1, V)``."""
        values = torch.cat([x[n] for n in self.names], dim=-1)  # (B, T, V)
        if values.dim() != 3:
            raise ValueError(f"expected (batch, time, variables) inputs, got {tuple(values.shape)}")
        per_server = _per_server(context)
        if self.compiled and _kernel_applies(values, context, per_server):
            return self._compiled(values, per_server)
        tables = {i: self._shared_table(values[..., i], i) for i in self.shared}
        b, steps, n_vars = values.shape
        selected = values.new_empty(b, steps, self.hidden)
        weights = values.new_empty(b, steps, n_vars)
        for lo in range(0, b, SERVERS_PER_CHUNK):
            part = slice(lo, lo + SERVERS_PER_CHUNK)
            ctx = None if context is None else (per_server[part] if per_server is not None else context[part])
            acc, w = self._chunk(values[part], ctx, {i: t(part) for i, t in tables.items()})
            selected[part] = acc.T.view(-1, steps, self.hidden)
            weights[part] = w.T.view(-1, steps, n_vars)
        return selected, weights.unsqueeze(-2)

    def _compiled(self, values: torch.Tensor, per_server: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """The forward pass in the compiled kernel (CPU, float32, finite values)."""
        b, steps, n_vars = values.shape
        if self._params is None:
            self._params = _kernel_params(self)
        own, shared, op, wp, wn = self._params
        hidden_w = wp[0].shape[1]
        if per_server is None or self.weights.context is None:
            context = np.zeros((b, hidden_w), dtype=np.float32)
        else:
            context = self.weights.context(per_server[:, 0]).detach().contiguous().numpy()
        tables, index = self._kernel_tables(values)
        selected = values.new_empty(b, steps, self.hidden)
        weights = values.new_empty(b, steps, n_vars)
        vsn_kernel.select(
            values.contiguous().numpy(),
            context,
            own,
            op,
            wp,
            wn,
            shared,
            tables,
            index,
            selected.numpy(),
            weights.numpy(),
            KERNEL_BLOCK,
        )
        return selected, weights.unsqueeze(-2)

    def _kernel_tables(self, values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Outputs ``(shared, hidden, distinct)`` of the time-only variables and each row's ``distinct`` index."""
        b, steps, _ = values.shape
        rows, index = [], np.empty((len(self.shared), b, steps), dtype=np.int64)
        for k, i in enumerate(self.shared):
            distinct, inverse = _distinct(values[..., i])
            index[k] = np.arange(steps) if inverse is None else inverse.numpy()
            rows.append(self.variables[i](distinct))
        size = max((len(r) for r in rows), default=1)
        tables = np.zeros((len(rows), self.hidden, size), dtype=np.float32)
        for k, r in enumerate(rows):
            tables[k, :, : len(r)] = r.detach().numpy().T
        return tables, index

    def _chunk(
        self, values: torch.Tensor, context: torch.Tensor | None, shared: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected embedding ``(hidden, rows)`` and weights ``(V, rows)`` of a few servers' values."""
        servers, steps, n_vars = values.shape
        columns = values.reshape(-1, n_vars).T.contiguous()  # (V, rows): one contiguous row per variable
        weights = self.weights(columns, context, servers)
        acc = values.new_zeros(self.hidden, columns.size(1))
        for i in self.own:
            variable: _Variable = self.variables[i]  # type: ignore[assignment]
            acc.addcmul_(variable.columns(columns[i]), weights[i])
        per_step = acc.view(self.hidden, servers, steps)
        for i, table in shared.items():
            per_step.addcmul_(table, weights[i].view(servers, steps))
        return acc, weights

    def _shared_table(self, column: torch.Tensor, i: int) -> Any:
        """Outputs ``(hidden, servers, T)`` of a time-only variable, computed once per distinct row."""
        distinct, inverse = _distinct(column)
        if inverse is None:
            row = self.variables[i](distinct).T  # (hidden, T)
            return lambda part: row[:, None, :]
        table = self.variables[i](distinct).T.contiguous()  # (hidden, distinct)
        return lambda part: table[:, inverse[part]]


def _distinct(column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A time-only column's distinct values and each entry's index among them.

    When every server has the same row (the usual case), that row and ``None``: entry ``(b, t)``
    is then value ``t``.
    """
    if bool((column == column[:1]).all()):
        return column[0], None
    distinct, inverse = torch.unique(column, return_inverse=True)
    return distinct, inverse


def _kernel_applies(values: torch.Tensor, context: torch.Tensor | None, per_server: torch.Tensor | None) -> bool:
    """Whether the compiled kernel computes this call: CPU float32 finite values, a per-server context, no autograd."""
    return (
        not (torch.is_grad_enabled() and values.requires_grad)
        and values.device.type == "cpu"
        and values.dtype == torch.float32
        and (context is None or per_server is not None)
        and bool(torch.isfinite(values).all())
    )


def _kernel_params(vsn: FusedVariableSelection) -> tuple[Any, ...]:
    """The kernel's numpy arrays: own and shared indices, own variables, the weight GRN, its norms."""
    variables: list[_Variable] = [vsn.variables[i] for i in vsn.own]  # type: ignore[misc]
    first: _Variable = vsn.variables[0]  # type: ignore[assignment]
    inner, hidden = first.u.numel(), vsn.hidden

    def stack(parts: list[np.ndarray], shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return np.ascontiguousarray(np.stack(parts) if parts else np.zeros((0, *shape)), dtype=dtype)

    lines, moments = [], []
    for v in variables:
        if isinstance(v.residual, _NormedLine):
            lines.append(np.stack([_np(v.residual.beta), _np(v.residual.pg), _np(v.residual.qg)]))
            moments.append(np.array(v.residual.moments))
        else:  # p·x + q: the normed form with unit scale
            lines.append(np.stack([np.zeros(hidden, np.float32), _np(v.residual.p), _np(v.residual.q)]))
            moments.append(np.array([0.0, 0.0, 1.0]))
    own = (
        stack([_np(v.u) for v in variables], (inner,)),
        stack([_np(v.w) for v in variables], (inner,)),
        stack([_np(v.PQ) for v in variables], (2 * hidden, inner + 1)),
        stack(lines, (3, hidden)),
        stack(moments, (3,), np.float64),
        stack([_norm_weight(v.out_norm) for v in variables], (hidden,)),
        stack([_norm_bias(v.out_norm) for v in variables], (hidden,)),
        np.array([v.out_norm.eps for v in variables], dtype=np.float32),
    )
    w = vsn.weights
    weight_grn = tuple(_np(t) for t in (w.A, w.d, w.G, w.g, w.R, w.r))
    norms = (
        _norm_weight(w.res_norm),
        _norm_bias(w.res_norm),
        _norm_weight(w.out_norm),
        _norm_bias(w.out_norm),
        np.float32(w.res_norm.eps),
        np.float32(w.out_norm.eps),
    )
    indices = (np.asarray(vsn.own, dtype=np.int64), np.asarray(vsn.shared, dtype=np.int64))
    return (*indices, own, weight_grn, norms)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def _norm_weight(norm: nn.LayerNorm) -> np.ndarray:
    return _np(norm.weight) if norm.weight is not None else np.ones(norm.normalized_shape, np.float32)


def _norm_bias(norm: nn.LayerNorm) -> np.ndarray:
    return _np(norm.bias) if norm.bias is not None else np.zeros(norm.normalized_shape, np.float32)


def _per_server(context: torch.Tensor | None) -> torch.Tensor | None:
    """The static context once per server when it is broadcast over time (stride 0), else ``None``."""
    if context is None or context.dim() != 3 or context.stride(1) != 0:
        return None
    return context[:, :1]
