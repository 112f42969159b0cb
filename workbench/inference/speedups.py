"""Output-preserving speed-ups of pytorch-forecasting's TFT for inference.

Profiling the stock network on a fleet (1,000 servers × 384 steps) shows two hot spots:

* the time-varying variable selection networks run one small gated residual network per
  variable, each with its own ``Linear`` layers and an ``F.interpolate`` call, then stack and
  concatenate the results (about 60 % of the time);
* the interpretable attention computes each head with separate projections, a division, a
  ``masked_fill`` and a softmax, materialising every weight matrix (about 30 %).

:class:`~workbench.inference.fused_vsn.FusedVariableSelection` collapses the affine layers
around each scalar input and evaluates time-only inputs once per distinct row;
:class:`ContextOncePerServer` projects the static context once per server instead of per step;
:class:`FusedAttention` projects all heads in one product and calls
``scaled_dot_product_attention``. All read the original modules' weights and compute the same
function; only floating-point rounding differs. :func:`optimise` applies them to a copy of the
network, leaving the original intact (the reference path keeps using it), and keeps the stock
module for any selection network whose inputs are not all plain reals.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
)
from torch import nn

from workbench.inference import fused_vsn


def optimise(network: TemporalFusionTransformer) -> TemporalFusionTransformer:
    """Return an eval-mode copy of ``network`` with the fused modules swapped in where they apply."""
    fast = copy.deepcopy(network).eval()
    known = set(network.hparams.time_varying_reals_decoder)  # calendar covariates, relative time index
    for name in ("encoder_variable_selection", "decoder_variable_selection"):
        module = getattr(fast, name)
        if fused_vsn.applies(module):
            setattr(fast, name, fused_vsn.FusedVariableSelection(module, shared=sorted(known)))
    fast.static_enrichment = ContextOncePerServer(fast.static_enrichment)
    fast.multihead_attn = FusedAttention(fast.multihead_attn)
    return fast


class ContextOncePerServer(nn.Module):
    """A context GRN whose static context is projected once per server, not once per step."""

    def __init__(self, grn: GatedResidualNetwork) -> None:
        super().__init__()
        self.grn = grn

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same as the wrapped GRN's forward."""
        g = self.grn
        if context is None or context.dim() != 3 or context.stride(1) != 0 or hasattr(g, "resample_norm"):
            return g(x, context, residual)
        hidden = g.fc1(x) + g.context(context[:, :1])
        return g.gate_norm(g.fc2(F.elu(hidden)), x if residual is None else residual)


class FusedAttention(nn.Module):
    """``InterpretableMultiHeadAttention`` with all heads projected at once and a fused kernel."""

    def __init__(self, attn: InterpretableMultiHeadAttention) -> None:
        super().__init__()
        self.n_head, self.d_k = attn.n_head, attn.d_k
        self.v_layer, self.w_h = attn.v_layer, attn.w_h
        self.q = _concat_linear(list(attn.q_layers))
        self.k = _concat_linear(list(attn.k_layers))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the attention output and a zero-cost placeholder for the (unused) weights."""
        b, tq, tk, h = q.size(0), q.size(1), k.size(1), self.n_head
        vs = self.v_layer(v)
        qs = self.q(q).view(b, tq, h, self.d_k).transpose(1, 2)
        ks = self.k(k).view(b, tk, h, self.d_k).transpose(1, 2)
        allowed = None if mask is None else ~mask.unsqueeze(1)
        heads = F.scaled_dot_product_attention(qs, ks, vs.unsqueeze(1).expand(b, h, tk, vs.size(-1)), allowed)
        outputs = self.w_h(heads.mean(dim=1) if h > 1 else heads[:, 0])
        # Attention weights only feed interpretation plots, never the forecast.
        return outputs, torch.zeros((), dtype=q.dtype, device=q.device).expand(b, tq, h, tk)


def _concat_linear(layers: list[nn.Linear]) -> nn.Linear:
    out = nn.Linear(layers[0].in_features, sum(layer.out_features for layer in layers))
    with torch.no_grad():
        out.weight.copy_(torch.cat([layer.weight for layer in layers]))
        out.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return out.requires_grad_(False)
