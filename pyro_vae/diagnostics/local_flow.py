"""The gap split's per-point flow family ("iaf" q*): a free Gaussian through K affine autoregressive transforms.

The richer family the inference gap split can also fit (``richer`` containing
"iaf", ``evaluate --gaps --gap-richer fullrank,iaf``).  For each point i,

    q*_i = T_K(.; c_i) o ... o T_1(.; c_i) (N(loc_i, diag scale_i^2)),

with T_k Pyro's ``conditional_affine_autoregressive`` transform in its plain
(ungated) form, y = mu_k(x; c) + exp(s_k(x; c)) * x, autoregressive in x.
Fitted for the points: each point's loc_i, scale_i and context c_i (its own
``out``, as every law's in diagnostics/local.py) and the transforms' networks
(shared by the points the split is run on, fitted with them).  The networks'
last layers start at zero, so every T_k starts as the identity: the fit starts
exactly at the Gaussian it is warm-started at (the diagonal q* of the guide's
own family, where that was fitted), and its ELBO can only climb from there.

Unlike the training guide "iaf" (models/graph/flows.py), nothing here is
amortized: the context is a free parameter per point, not an encoder's output.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist
from pyro.distributions.transforms import conditional_affine_autoregressive

from ..models.graph.flows import DEFAULT_FLOWS, ConditionedFlow, context_size, hidden_sizes, quiet_made
from ..models.graph.guides import MIN_SCALE, raw_scale


class LocalFlowLaw(nn.Module):
    """A per-point flow law: ``out`` = (loc, raw scale, context) per point, the transforms started at the identity."""

    point_mass = False

    def __init__(self, node):
        super().__init__()
        dim = int(node.dim)
        self.context = context_size(dim)
        hidden = hidden_sizes(dim, node.flow_hidden)
        count = int(node.flows or DEFAULT_FLOWS)
        self.transforms = nn.ModuleList(
            quiet_made(lambda: conditional_affine_autoregressive(dim, self.context, hidden_dims=hidden))
            for _ in range(count))
        with torch.no_grad():
            for t in self.transforms:
                last = t.nn.layers[-1]  # mu and log-scale: 0 and 0, so T(x) = x until the fit moves them
                last.weight.zero_()
                last.bias.zero_()

    @classmethod
    def for_node(cls, node) -> "LocalFlowLaw":
        return cls(node)

    def features(self, dim: int) -> int:
        return 2 * dim + self.context

    def warm_start(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``out`` whose q is N(loc, diag scale^2) exactly (the transforms are the identity at the start)."""
        return torch.cat([loc, raw_scale(scale), loc.new_zeros(loc.shape[:-1] + (self.context,))], -1)

    def _parts(self, out: torch.Tensor, dim: int):
        loc, raw, context = out.split([dim, dim, self.context], dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE, context

    def law(self, out: torch.Tensor, dim: int) -> dist.Distribution:
        loc, scale, context = self._parts(out, dim)
        base = dist.Normal(loc, scale).to_event(1)
        q = dist.ConditionalTransformedDistribution(base, list(self.transforms)).condition(context)
        return ConditionedFlow(q.base_dist, q.transforms)

    def mean(self, out: torch.Tensor, dim: int) -> torch.Tensor:
        loc, _, context = self._parts(out, dim)
        for t in self.transforms:
            loc = t.condition(context)(loc)
        return loc


#: the per-point families the gap split fits under a name of their own (before the registered guide laws)
LOCAL_LAWS: Dict[str, type] = {"iaf": LocalFlowLaw}
