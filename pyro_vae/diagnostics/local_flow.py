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
from pyro.distributions.transforms import conditional_affine_autoregressive

from ..models.graph.flows import FlowLaw


class LocalFlowLaw(FlowLaw):
    """A per-point flow law: ``out`` = (loc, raw scale, context) per point, the transforms started at the identity.

    The training guide's flow law (models/graph/flows.py) with plain transforms whose last layers start at zero;
    its ``warm_start`` is then N(loc, diag scale^2) exactly."""

    def __init__(self, node):
        super().__init__(node)
        with torch.no_grad():
            for t in self.transforms:
                last = t.nn.layers[-1]  # mu and log-scale: 0 and 0, so T(x) = x until the fit moves them
                last.weight.zero_()
                last.bias.zero_()

    @staticmethod
    def transform(dim, context, hidden):
        return conditional_affine_autoregressive(dim, context, hidden_dims=hidden)


#: the per-point families the gap split fits under a name of their own (before the registered guide laws)
LOCAL_LAWS: Dict[str, type] = {"iaf": LocalFlowLaw}
