"""Flow guide laws: the encoder's diagonal Gaussian followed by K conditional autoregressive transforms (IAF, spline).

``guide = "iaf"`` is Kingma et al. (2016)'s inverse autoregressive flow:
z0 ~ N(loc, diag scale^2), then K conditional affine autoregressive transforms
(Pyro's ``conditional_affine_autoregressive``, the gated "stable" form of the
paper) that each read a context h, all three (loc, scale, h) from the node's
encoder.  ``guide = "spline"`` uses conditional neural-spline autoregressive
transforms instead (``conditional_spline_autoregressive``).  q is Pyro's
``ConditionalTransformedDistribution(...).condition(h)``, so log q(z|x) is
Pyro's own change of variables.

A flow law holds learned modules, so unlike the static laws of guides.py it
is an ``nn.Module`` built once per node (``law_class(node)``) and owned by the
node's family (families.py ``_Continuous``); its interface is the same
three calls, ``features(dim)``, ``law(out, dim)``, ``mean(out, dim)``.

Pyro's autoregressive transforms cache their last (input, output) pair, so the
density of q's own draw reuses the forward pass; the density of any other
value (a reference posterior's draw) is computed by the exact inverse.  Both
give the same number (tests/test_flow_guides.py).

``mean`` is not E_q[z], which has no closed form: it is the flow applied to
the base Gaussian's mean, T(loc; h), deterministic and draw-free (what
``encode`` reports for a flow guide).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist
from pyro.distributions.transforms import conditional_affine_autoregressive, conditional_spline_autoregressive

from .guides import GUIDE_LAWS, MIN_SCALE

#: transforms of a flow guide or prior when ``flows`` is not given
DEFAULT_FLOWS = 2


def context_size(dim: int) -> int:
    """The width of the context h the encoder hands the transforms: twice the latent's size (as loc and scale)."""
    return 2 * dim


def hidden_sizes(dim: int, hidden: Optional[Sequence[int]]) -> List[int]:
    """An autoregressive network's hidden sizes: the node's ``flow_hidden``, else Pyro's default (10 * dim)."""
    return list(hidden) if hidden else [10 * dim]


def quiet_made(build):
    """Build a Pyro autoregressive network without its warning for a 1-D input (an affine map of the context,
    which is what a 1-D flow is).  On torch's meta device (the size check, models/build.py) it is built on the
    CPU: its constructor reads a tensor back (``.item()``), which a meta tensor cannot do; it is small."""
    meta = torch.empty(0).device.type == "meta"
    with warnings.catch_warnings(), torch.device("cpu") if meta else contextlib.nullcontext():
        warnings.filterwarnings("ignore", message=".*AutoRegressiveNN input_dim = 1")
        return build()


class ConditionedFlow(dist.TransformedDistribution):
    """Pyro's ``TransformedDistribution`` that broadcasts a value to its batch shape before scoring it.

    The conditional transforms read one context per batch element and take inputs of exactly that batch shape,
    while Pyro scores a value against a law of a larger batch (an enumerated parent's values left of the
    plate, a VampPrior's components) by broadcasting.  A value of the full shape (q's own draw) is scored as
    it is, so the transforms' cache still serves it."""

    def log_prob(self, value):
        event = len(self.event_shape)
        shape = torch.broadcast_shapes(value.shape[: value.dim() - event], self.batch_shape) + self.event_shape
        return super().log_prob(value if value.shape == shape else value.expand(shape))


class FlowLaw(nn.Module):
    """q = T_K o ... o T_1 (N(loc, diag scale^2)) with every T_k conditioned on the encoder's context h."""

    point_mass = False

    def __init__(self, node):
        super().__init__()
        dim = int(node.dim)
        self.context = context_size(dim)
        hidden = hidden_sizes(dim, node.flow_hidden)
        count = int(node.flows or DEFAULT_FLOWS)
        self.transforms = nn.ModuleList(quiet_made(lambda: self.transform(dim, self.context, hidden))
                                        for _ in range(count))

    @staticmethod
    def transform(dim: int, context: int, hidden: List[int]):
        raise NotImplementedError

    def features(self, dim: int) -> int:
        return 2 * dim + self.context

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


@GUIDE_LAWS.register("iaf")
class IAFLaw(FlowLaw):
    """Kingma et al.'s IAF: conditional affine autoregressive transforms in their gated ("stable") form."""

    @staticmethod
    def transform(dim, context, hidden):
        return conditional_affine_autoregressive(dim, context, hidden_dims=hidden, stable=True)


@GUIDE_LAWS.register("spline")
class SplineLaw(FlowLaw):
    """A conditional neural-spline flow: monotone rational-quadratic splines, autoregressive in z."""

    #: read by step capture (training/capture.py): Pyro's spline selects the values inside its interval by a
    #: boolean mask, so the shapes of a step depend on the draws and a recording cannot stand for later steps
    capture_problem = ("the spline guide's transforms index the draws inside the spline's interval by a mask, "
                       "whose size changes from step to step, so a recorded step cannot be replayed")

    @staticmethod
    def transform(dim, context, hidden):
        return conditional_spline_autoregressive(dim, context, hidden_dims=hidden)


def law_for(law, node):
    """The guide law a node's family uses: a flow law (a module) built for the node, a static law as it is."""
    return law(node) if isinstance(law, type) and issubclass(law, nn.Module) else law
