"""Output-preserving speed-ups of pytorch-forecasting's TFT for inference.

Profiling the stock network on a fleet (1,000 servers × 384 steps) shows two hot spots:

* the time-varying variable selection networks run one small gated residual network per
  variable, each with its own ``Linear`` layers and an ``F.interpolate`` call, then stack and
  concatenate the results (about 60 % of the time);
* the interpretable attention computes each head with separate projections, a division, a
  ``masked_fill`` and a softmax, materialising every weight matrix (about 30 %).

:class:`~workbench.inference.fused_vsn.FusedVariableSelection` collapses the affine layers
around each scalar input and evaluates time-only inputs once per distinct row;
:class:`FusedGRN` merges a gated residual network's ``fc2`` and gate ``Linear`` into one product
and projects a static context once per server instead of per step; :class:`FusedAttention`
projects all heads in one product and, since the heads share their values, takes each query's
softmax over the keys and its product with the values per server, summed over heads;
:class:`FullLengthLSTM` skips packing when every sequence has the full length. On CPU the
variable selection and the attention core run in compiled kernels (numba) that release the
GIL, so the engine's batches in parallel threads do not wait on each other. All read the
original modules' weights and compute the same function; only floating-point rounding
differs. :func:`optimise` applies them to a copy of the network, leaving the original intact
(the reference path keeps using it), and keeps the stock module wherever a module's
assumptions do not hold (inputs that are not all plain reals, other GRN variants, training mode).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer
from pytorch_forecasting.models.nn.rnn import LSTM
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GateAddNorm,
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
)
from torch import nn

from workbench.inference import attention_kernel, fused_vsn, gate_kernel
from workbench.inference.fused_vsn import elu, is_unit_elu

ATTENTION_SERVERS_PER_CHUNK = 4  # servers whose (heads, queries, keys) weights are materialised at once


def optimise(network: TemporalFusionTransformer) -> TemporalFusionTransformer:
    """Return an eval-mode copy of ``network`` with the fused modules swapped in where they apply."""
    fast = copy.deepcopy(network).eval()
    known = set(network.hparams.time_varying_reals_decoder)  # calendar covariates, relative time index
    for name in ("encoder_variable_selection", "decoder_variable_selection"):
        module = getattr(fast, name)
        if fused_vsn.applies(module):
            setattr(fast, name, fused_vsn.FusedVariableSelection(module, shared=sorted(known)))
    for name in ("static_enrichment", "pos_wise_ff"):
        if FusedGRN.applies(getattr(fast, name)):
            setattr(fast, name, FusedGRN(getattr(fast, name)))
    for name, child in list(fast.named_children()):
        if FusedGateAddNorm.applies(child):
            setattr(fast, name, FusedGateAddNorm(child))
    for name in ("lstm_encoder", "lstm_decoder"):
        if isinstance(getattr(fast, name), LSTM):
            setattr(fast, name, FullLengthLSTM(getattr(fast, name)))
    fast.multihead_attn = FusedAttention(fast.multihead_attn)
    return fast.eval()  # new modules start in training mode


class FusedGRN(nn.Module):
    """A ``GatedResidualNetwork`` whose ``fc2`` and gate ``Linear`` are one product.

    In eval mode the gate's dropout is the identity, so ``glu.fc(fc2(h))`` is the single affine
    map ``h·(W_g W_2)ᵀ + (W_g b_2 + b_g)``. A static context broadcast over time (stride 0) is
    projected once per server. In training mode the stock module runs.
    """

    def __init__(self, grn: GatedResidualNetwork) -> None:
        super().__init__()
        self.grn = grn
        wg, w2 = grn.gate_norm.glu.fc.weight.detach().double(), grn.fc2.weight.detach().double()
        bias = wg @ grn.fc2.bias.detach().double() + grn.gate_norm.glu.fc.bias.detach().double()
        self.weight = nn.Parameter((wg @ w2).float(), requires_grad=False)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)

    @staticmethod
    def applies(grn: nn.Module) -> bool:
        """Whether ``grn`` is a plain GRN: no resampled residual, no trainable add, a unit ELU."""
        return (
            isinstance(grn, GatedResidualNetwork)
            and not hasattr(grn, "resample_norm")
            and not hasattr(grn.gate_norm.add_norm, "resample")
            and not grn.gate_norm.add_norm.trainable_add
            and is_unit_elu(grn.elu)
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same as the wrapped GRN's forward."""
        g = self.grn
        if self.training:
            return g(x, context, residual)
        hidden = g.fc1(x)
        if context is not None:
            hidden = _add(hidden, g.context(_once_per_server(context)))
        gated = F.linear(elu(hidden), self.weight, self.bias)
        return glu_add_norm(gated, x if residual is None else residual, g.gate_norm.add_norm.norm)


class FusedGateAddNorm(nn.Module):
    """A ``GateAddNorm`` (``LayerNorm(GLU(x) + skip)``) whose GLU, addition and norm are one pass.

    In training mode the stock module runs.
    """

    def __init__(self, block: GateAddNorm) -> None:
        super().__init__()
        self.block = block

    @staticmethod
    def applies(block: nn.Module) -> bool:
        """Whether ``block`` is a plain ``GateAddNorm``: no resampled skip, no trainable add."""
        if not isinstance(block, GateAddNorm):
            return False
        return not hasattr(block.add_norm, "resample") and not block.add_norm.trainable_add

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Same as the wrapped block's forward."""
        if self.training:
            return self.block(x, skip)
        fc = self.block.glu.fc
        return glu_add_norm(F.linear(x, fc.weight, fc.bias), skip, self.block.add_norm.norm)


def glu_add_norm(gated: torch.Tensor, skip: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(F.glu(gated) + skip)``: in one compiled pass on CPU, else in torch.

    Args:
        gated: ``(..., 2H)``, the GLU's input.
        skip: ``(..., H)`` or a shape that broadcasts to it.
        norm: A ``LayerNorm`` over ``H`` features.

    Returns:
        The normed sum, shaped like the GLU's output.
    """
    hidden = gated.size(-1) // 2
    shape = (*gated.shape[:-1], hidden)
    if skip.shape == shape and norm.weight is not None and norm.bias is not None and _compiled_applies(gated, skip):
        out = gated.new_empty(shape)
        rows = out.numel() // max(hidden, 1)
        gate_kernel.glu_add_norm(
            gated.reshape(rows, 2 * hidden).numpy(),
            skip.reshape(rows, hidden).numpy(),
            norm.weight.detach().numpy(),
            norm.bias.detach().numpy(),
            norm.eps,
            out.view(rows, hidden).numpy(),
        )
        return out
    summed = _add(F.glu(gated, dim=-1), skip)
    return F.layer_norm(summed, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _once_per_server(context: torch.Tensor) -> torch.Tensor:
    """``context[:, :1]`` when a 3-d context is broadcast over time (stride 0), else ``context``."""
    return context[:, :1] if context.dim() == 3 and context.stride(1) == 0 else context


def _add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y``, in place in ``x`` (a fresh intermediate) when the result has ``x``'s shape."""
    return x.add_(y) if torch.broadcast_shapes(x.shape, y.shape) == x.shape else x + y


class FullLengthLSTM(nn.Module):
    """pytorch-forecasting's ``LSTM`` that skips packing when every sequence has the full length.

    With equal lengths, packing sorts, transposes and unsorts the batch for nothing: the plain
    ``nn.LSTM`` gives the same outputs and final states. Other lengths go to the stock wrapper.
    """

    def __init__(self, lstm: LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(
        self,
        x: torch.Tensor,
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
        enforce_sorted: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """Same as the wrapped LSTM's forward."""
        if isinstance(x, torch.Tensor) and lengths is not None and len(lengths):
            steps = x.size(1 if self.lstm.batch_first else 0)
            if steps > 0 and bool((lengths == steps).all()):
                return nn.LSTM.forward(self.lstm, x, hx)
        return self.lstm(x, hx, lengths=lengths, enforce_sorted=enforce_sorted)


class FusedAttention(nn.Module):
    """``InterpretableMultiHeadAttention`` for inference, with materialised per-server weights.

    All heads' queries and keys come from one product each (the ``1/√d_k`` scale folded into the
    query weights). The heads share one value projection, so the mean over heads of
    ``softmax(q·kᵀ)·v`` is one product of each server's stacked head weights with its values.
    Scores, softmax and that product run a few servers at a time in reused buffers that stay
    in cache; the product is taken as ``vᵀ·pᵀ``, a shape the CPU BLAS handles far better. The
    mask adds ``mask_bias`` like the stock ``masked_fill`` (the same result unless a query sees
    no key at all). On CPU (float32, no autograd) and with ``compiled``, the scores, softmax and
    value products run in :func:`~workbench.inference.attention_kernel.attend` instead. In
    training mode, or with an unexpected mask, the stock module runs.
    """

    def __init__(self, attn: InterpretableMultiHeadAttention, compiled: bool = True) -> None:
        super().__init__()
        self.attn = attn
        self.compiled = compiled
        self.n_head, self.d_k = attn.n_head, attn.d_k
        self.mask_bias = float(getattr(attn, "mask_bias", -1e9))
        self.v_layer = attn.v_layer
        self.q = _concat_linear(list(attn.q_layers), scale=attn.d_k**-0.5)
        self.k = _concat_linear(list(attn.k_layers))
        self.w_h = nn.Parameter(attn.w_h.weight.detach() / attn.n_head, requires_grad=False)  # mean over heads

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the attention output and a zero-cost placeholder for the (unused) weights."""
        b, tq, tk, h = q.size(0), q.size(1), k.size(1), self.n_head
        if self.training or q.dim() != 3 or (mask is not None and (mask.dtype != torch.bool or mask.dim() != 3)):
            return self.attn(q, k, v, mask)
        if self.compiled and _compiled_applies(q, k, v):
            return self._compiled(q, k, v, mask)
        values = self.v_layer(v).transpose(1, 2).contiguous()  # (b, d_v, tk)
        queries = self.q(q).view(b, tq, h, self.d_k).transpose(1, 2).reshape(b * h, tq, self.d_k)
        keys = self.k(k).view(b, tk, h, self.d_k).permute(0, 2, 3, 1).reshape(b * h, self.d_k, tk)
        bias, chunk = self._mask_bias(mask, b, tq, tk, q)
        out = q.new_empty(b, values.size(1), h * tq)  # per server: (d_v, heads × queries)
        scores = q.new_empty(chunk * h, tq, tk)
        weights = torch.empty_like(scores)
        for lo in range(0, b, chunk):
            n = min(chunk, b - lo)
            rows = slice(lo * h, (lo + n) * h)
            s = torch.baddbmm(bias(lo), queries[rows], keys[rows], out=scores[: n * h])
            p = torch.ops.aten._softmax.out(s, -1, False, out=weights[: n * h])
            torch.bmm(values[lo : lo + n], p.view(n, h * tq, tk).transpose(1, 2), out=out[lo : lo + n])
        heads = out.view(b, -1, h, tq).sum(dim=2).transpose(1, 2)  # (b, tq, d_v)
        outputs = F.linear(heads, self.w_h)
        # Attention weights only feed interpretation plots, never the forecast.
        return outputs, torch.zeros((), dtype=q.dtype, device=q.device).expand(b, tq, h, tk)

    def _compiled(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass with the scores, softmax and value products in the compiled kernel."""
        b, tq, tk, h = q.size(0), q.size(1), k.size(1), self.n_head
        queries = self.q(q).view(b, tq, h, self.d_k)
        keys = self.k(k).view(b, tk, h, self.d_k)
        values = self.v_layer(v).contiguous()
        heads = q.new_empty(b, tq, values.size(-1))
        bias = self._bias(mask, b, tq, tk, q)
        attention_kernel.attend(queries.numpy(), keys.numpy(), values.numpy(), bias.numpy(), heads.numpy())
        outputs = F.linear(heads, self.w_h)
        return outputs, torch.zeros((), dtype=q.dtype, device=q.device).expand(b, tq, h, tk)

    def _bias(self, mask: torch.Tensor | None, b: int, tq: int, tk: int, like: torch.Tensor) -> torch.Tensor:
        """The additive mask: ``(1, tq, tk)`` when every server has the same, else ``(b, tq, tk)``."""
        if mask is None:
            return like.new_zeros(1, tq, tk)
        if _same_for_every_server(mask):  # the usual case: every server has full windows
            return like.new_zeros(1, tq, tk).masked_fill_(mask[:1], self.mask_bias)
        return like.new_zeros(b, tq, tk).masked_fill_(mask, self.mask_bias)

    def _mask_bias(
        self, mask: torch.Tensor | None, b: int, tq: int, tk: int, like: torch.Tensor
    ) -> tuple[Callable[[int], torch.Tensor], int]:
        """The additive mask of the servers from ``lo`` on, and how many servers to take at once."""
        bias = self._bias(mask, b, tq, tk, like)
        if bias.size(0) == 1:
            return (lambda lo: bias[0]), ATTENTION_SERVERS_PER_CHUNK
        return (lambda lo: bias[lo]), 1


def _compiled_applies(*tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels take a call: float32 CPU tensors and no autograd."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and not (
        torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    )


def _same_for_every_server(mask: torch.Tensor) -> bool:
    """Whether every server's ``(queries, keys)`` boolean mask equals the first one's."""
    if mask.is_contiguous() and mask.size(-1) % 8 == 0:  # compare 8 booleans at a time
        mask = mask.view(torch.uint8).view(torch.int64)
    return torch.equal(mask, mask[:1].expand_as(mask))


def _concat_linear(layers: list[nn.Linear], scale: float = 1.0) -> nn.Linear:
    out = nn.Linear(layers[0].in_features, sum(layer.out_features for layer in layers))
    with torch.no_grad():
        out.weight.copy_(torch.cat([layer.weight for layer in layers]) * scale)
        out.bias.copy_(torch.cat([layer.bias for layer in layers]) * scale)
    return out.requires_grad_(False)
