"""Node families: what a graph node's values are, its fixed or learned root prior, its conditional and guide laws.

A family turns network outputs into a Pyro distribution over one node's value
per data point (event dim 1 for vectors; a scalar class or code for discrete
nodes, so that Pyro can enumerate it), and a value into the features a
network reads (one-hot classes, bits).  Discrete families are summed exactly
by TraceEnum_ELBO; their guide laws are marked for parallel enumeration.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist

from ...registry import Registry
from .guides import GUIDE_LAWS, MIN_SCALE
from .priors import FlowPrior

FAMILIES: Registry = Registry("node family")

_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(_SOFTPLUS_ONE) = 1


class Family(nn.Module):
    """One node's law.  ``dim``: its size (classes, bits); holds the node's free prior/scale parameters."""

    discrete = False

    def __init__(self, node):
        super().__init__()
        self.dim = int(node.dim)

    @property
    def feature_size(self) -> int:
        return self.dim

    def features(self, value: torch.Tensor) -> torch.Tensor:
        return value

    # the model's side: a root's prior, or the law given the parents' network output
    def prior(self, shape) -> dist.Distribution:
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        raise NotImplementedError

    def conditional(self, out: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    # the guide's side
    @property
    def guide_features(self) -> int:
        return self.out_features

    def guide(self, out: torch.Tensor) -> dist.Distribution:
        return self.conditional(out)


class _Continuous(Family):
    """A continuous node, whose q is the guide law its ``guide`` names (models/graph/guides.py)."""

    def __init__(self, node):
        super().__init__(node)
        # a law with settings or learned parts of its own (lowrank's rank, a flow's transforms) is bound to the
        # node here; a flow law is a module, registered here so that its parameters train and are checkpointed
        self.guide_law = GUIDE_LAWS[node.guide].for_node(node)

    @property
    def guide_features(self):
        return self.guide_law.features(self.dim)

    def guide(self, out):
        return self.guide_law.law(out, self.dim)

    def guide_mean(self, out):
        """The mean of q from the encoder's outputs (the code of a point-mass guide)."""
        return self.guide_law.mean(out, self.dim)


class _LocScale(_Continuous):
    law = None

    def __init__(self, node):
        super().__init__(node)
        self.scale_mode = node.scale if node.scale is not None else "amortized"
        self.register_buffer("prior_loc", torch.zeros(self.dim))
        self.register_buffer("prior_scale", torch.full((self.dim,), float(node.prior_scale)))
        if node.prior == "learned" and not node.parents:
            self.prior_loc = nn.Parameter(self.prior_loc.clone())
            self.raw_prior_scale = nn.Parameter(torch.full((self.dim,), _SOFTPLUS_ONE + math.log(node.prior_scale)))
        if node.parents and self.scale_mode == "learned":
            self.raw_scale = nn.Parameter(torch.full((self.dim,), _SOFTPLUS_ONE))
        elif node.parents and not isinstance(self.scale_mode, str):
            self.register_buffer("fixed_scale", torch.full((self.dim,), float(self.scale_mode)))
        # prior = "flow": transforms of the fixed prior (priors.py); "vamp" is the graph's, as it reads an encoder
        self.prior_flow = FlowPrior(node) if node.prior == "flow" and not node.parents else None

    def prior(self, shape):
        scale = F.softplus(self.raw_prior_scale) + MIN_SCALE if hasattr(self, "raw_prior_scale") else self.prior_scale
        base = self.law(self.prior_loc, scale).expand(tuple(shape) + (self.dim,)).to_event(1)
        return base if self.prior_flow is None else self.prior_flow.law(base)

    @property
    def out_features(self):
        return 2 * self.dim if self.scale_mode == "amortized" else self.dim

    def conditional(self, out):
        if self.scale_mode == "amortized":
            loc, raw = out.split(self.dim, dim=-1)
            return self.law(loc, F.softplus(raw) + MIN_SCALE).to_event(1)
        scale = F.softplus(self.raw_scale) + MIN_SCALE if self.scale_mode == "learned" else self.fixed_scale
        return self.law(out, scale.expand(out.shape)).to_event(1)



@FAMILIES.register("normal")
class Normal(_LocScale):
    law = dist.Normal


@FAMILIES.register("laplace")
class Laplace(_LocScale):
    law = dist.Laplace


def dirichlet_laplace(alpha: torch.Tensor):
    """(loc, scale) of the Laplace approximation of Dirichlet(alpha) in the softmax basis (MacKay 1998; Srivastava
    & Sutton 2017, eq. 3): mu_k = log a_k - mean(log a), var_k = (1 - 2/K) / a_k + sum(1/a) / K^2."""
    k = alpha.shape[-1]
    loc = alpha.log() - alpha.log().mean(-1, keepdim=True)
    var = (1.0 - 2.0 / k) / alpha + (1.0 / alpha).sum(-1, keepdim=True) / k**2
    return loc, var.sqrt()


@FAMILIES.register("logistic_normal")
class LogisticNormal(Normal):
    """Proportions on the simplex, a topic model's theta: a Gaussian site h (the density Pyro scores), read by the
    networks as softmax(h).  A root's fixed prior is the Laplace approximation of a symmetric Dirichlet(alpha)
    (``concentration``), as ProdLDA's; "learned" starts there.  The guide is the node's ``guide`` law on h."""

    def __init__(self, node):
        super().__init__(node)
        alpha = 1.0 if node.concentration is None else float(node.concentration)
        loc, scale = dirichlet_laplace(torch.full((self.dim,), alpha))
        self.prior_loc = loc if not isinstance(self.prior_loc, nn.Parameter) else nn.Parameter(loc)
        self.prior_scale = scale
        if hasattr(self, "raw_prior_scale"):
            # softplus(raw) + MIN_SCALE = scale at initialisation
            self.raw_prior_scale = nn.Parameter(torch.log(torch.expm1(scale - MIN_SCALE)))

    def features(self, value):
        return value.softmax(-1)


@FAMILIES.register("categorical")
class Categorical(Family):
    """A class in 0..dim-1: a scalar site Pyro enumerates; networks read it one-hot."""

    discrete = True

    def __init__(self, node):
        super().__init__(node)
        if node.prior == "learned" and not node.parents:
            self.prior_logits = nn.Parameter(torch.zeros(self.dim))
        else:
            self.register_buffer("prior_logits", torch.zeros(self.dim))
        self.register_buffer("classes", torch.arange(self.dim), persistent=False)

    def features(self, value):
        # one-hot by comparison: F.one_hot checks the values' range on the host, which a step capture cannot record
        return (value.long().unsqueeze(-1) == self.classes).to(self.prior_logits.dtype)

    def prior(self, shape):
        return dist.Categorical(logits=self.prior_logits.expand(tuple(shape) + (self.dim,)))

    @property
    def out_features(self):
        return self.dim

    def conditional(self, out):
        return dist.Categorical(logits=out)


@FAMILIES.register("bernoulli")
class Bernoulli(Family):
    """``dim`` independent bits, held as one code in 0..2**dim-1 so that the exact sum is one enumerated site."""

    discrete = True

    def __init__(self, node):
        super().__init__(node)
        codes = torch.arange(2 ** self.dim)
        self.register_buffer("bits", ((codes[:, None] >> torch.arange(self.dim)) & 1).float())  # (2**dim, dim)
        if node.prior == "learned" and not node.parents:
            self.prior_logits = nn.Parameter(torch.zeros(self.dim))
        else:
            self.register_buffer("prior_logits", torch.zeros(self.dim))

    def features(self, value):
        return self.bits[value.long()]

    def _codes(self, logits):
        # log p(code) = sum_j b_j log sigmoid(l_j) + (1 - b_j) log sigmoid(-l_j)
        return F.logsigmoid(logits) @ self.bits.T + F.logsigmoid(-logits) @ (1 - self.bits).T

    def prior(self, shape):
        return dist.Categorical(logits=self._codes(self.prior_logits).expand(tuple(shape) + (2 ** self.dim,)))

    @property
    def out_features(self):
        return self.dim

    def conditional(self, out):
        return dist.Categorical(logits=self._codes(out))


@FAMILIES.register("mixture")
class Mixture(_Continuous):
    """A Gaussian-mixture prior: a component c ~ Cat(w) (enumerated in the model), then z ~ N(mu_c, diag s_c^2).

    The means and scales are learned; ``prior = "learned"`` learns the weights as well ("fixed": uniform).
    The guide's law is the node's ``guide``, as for a normal node.
    """

    def __init__(self, node):
        super().__init__(node)
        k = int(node.components)
        self.components = k
        # spread the initial means so that the components start apart (a fixed draw: the model is seeded)
        self.loc = nn.Parameter(torch.randn(k, self.dim) * node.prior_scale)
        self.raw_scale = nn.Parameter(torch.full((k, self.dim), _SOFTPLUS_ONE + math.log(node.prior_scale)))
        if node.prior == "learned":
            self.logits = nn.Parameter(torch.zeros(k))
        else:
            self.register_buffer("logits", torch.zeros(k))

    def component(self, shape) -> dist.Distribution:
        return dist.Categorical(logits=self.logits.expand(tuple(shape) + (self.components,)))

    def given_component(self, c):
        """N(mu_c, diag s_c^2) at the component(s) ``c`` (enumerated: one law per value)."""
        return dist.Normal(self.loc[c], F.softplus(self.raw_scale[c]) + MIN_SCALE).to_event(1)

    def component_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """p(c | z) for each row of z: (rows, components)."""
        every = self.given_component(torch.arange(self.components, device=self.loc.device))
        return (every.log_prob(z.unsqueeze(-2)) + self.logits.log_softmax(-1)).softmax(-1)



@FAMILIES.register("real")
class Real(Family):
    """An input's real vector, read as it is."""
