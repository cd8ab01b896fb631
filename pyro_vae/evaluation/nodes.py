"""Per-node ELBO terms: each sample site's share of a point's ELBO, its discrete sites summed exactly.

The ELBO of a point splits over the sample sites ("nodes") of model and guide:

    elbo = sum over observed sites o of  E_q[log p(o | ...)]
         - sum over latent sites l of    E_q[log q(l | ...) - log p(l | ...)]

- a continuous latent's term is its KL, analytic where torch/Pyro knows it
  and it is exact for this guide (the rule the total KL follows: not for the
  sites infer/dependence.py names, nor for a density a model's own discrete
  site enters), evaluated at the guide's draws of the other latents; else
  the Monte Carlo log q - log p.  A point-mass (Delta) site's "KL" is
  -log p(z) at its code;
- a guide's discrete site y (``Layout.summed_guide``) is summed exactly: the
  guide and the model are traced once per value of y (per joint value of
  several), each value weighted by q(y | ...), so y's own term is
  KL(q(y|x) || p(y)) and every other term averages over y with those
  weights, not by sampling y.  The latents the guide draws before y keep
  their draw in every pass (so y is summed given them); those after it are
  drawn afresh given each value;
- a discrete site only the model has (a mixture's component c,
  ``Layout.summed_model_only``) has no term of its own: it is summed out of
  the densities that read it.  Those sites are scored under the model with c
  summed out, by the chain rule in a fixed order (latents in model order,
  then observations), so a latent z that c parents gets
  log sum_c p(c) p(z | c), and its node's ``summed_over`` names c.

Each site's term per draw is one (k, b) float64 matrix (:func:`site_draws`);
evaluation/estimators.py averages them over the draws, and the reported
reconstruction and KL are their sums, so the nodes add up to the ELBO of
every point.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import pyro.distributions as dist
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from ..data import batch
from ..infer.rng import forked_rng
from ..infer.layout import Layout
from ..infer.sites import (elementwise_base, enumerated_trace, in_particles, is_latent, is_point_mass, particles,
                           per_point, site_matrix, trace_pair)

__all__ = ["SiteTerm", "NodeSummary", "Node", "node_specs", "SiteDraw", "site_draws", "analytic_kl"]


@dataclass
class SiteTerm:
    """One node's per-point term of the ELBO (CPU float64, one entry per data point), with its Monte Carlo variance.

    ``kind`` "observed": ``term`` is E_q[log p(o | ...)], added to the ELBO;
    "latent" or "discrete": ``term`` is E_q[log q(l | ...) - log p(l | ...)],
    subtracted from it.  ``method``: "analytic" (a closed-form KL at the
    other latents' draws), "monte_carlo", "exact_sum" (a discrete guide site,
    summed over its values) or "point_mass" (-log p at a Delta's code).
    ``var`` is the Monte Carlo variance of the per-point estimate (NaN where
    one draw cannot estimate it).  ``latent_names`` are the node's columns in
    :attr:`PointwiseEvaluation.latent_names` (none for observed and discrete
    sites); ``summed_over`` the model's own discrete sites summed out of its
    density (a mixture prior's component).
    """

    name: str
    kind: str
    method: str
    dims: int  # numbers per data point
    term: torch.Tensor  # (n,)
    var: torch.Tensor  # (n,)
    latent_names: List[str] = field(default_factory=list)
    summed_over: List[str] = field(default_factory=list)


@dataclass
class NodeSummary:
    """One node of ``PointwiseEvaluation.summary()["nodes"]``: the per-point term averaged over the points."""

    name: str
    kind: str
    method: str
    term: Optional[float]  # mean over the points (None if not finite)
    se: Optional[float]  # its Monte Carlo standard error
    dims: int
    active_units: Optional[int]  # a continuous latent's dims with Cov_x(E_q[z_j]) above the threshold
    posterior_mean_variance: Optional[List[Optional[float]]]
    kl_per_dim: Optional[List[Optional[float]]]  # a continuous latent's KL per dim, where it factorizes
    latent_names: List[str]
    summed_over: List[str]
    # of a chain's step: its dims that 2+ sequences reach, among which active_units are counted (None: all dims)
    active_of: Optional[int] = None


@dataclass(frozen=True)
class Node:
    """What a node is, read once off a trace: its name, kind, numbers per point, and a discrete site's values."""

    name: str
    kind: str
    dims: int
    point_mass: bool = False
    levels: int = 0  # values of a discrete guide site


@torch.no_grad()
def node_specs(model, x, layout: Layout) -> List[Node]:
    """The nodes of a model, in report order: the guide's discrete sites, the continuous latents, the observations.

    Traced once on the rows of ``x`` (a couple suffice) on a forked RNG stream.
    """
    b = batch.num_rows(x)
    nest, data_dim = layout.nest, layout.data_dim
    with forked_rng(batch.reference(x).device):
        gtr, mtr = trace_pair(model, x)

    def dims(site) -> int:
        v = torch.as_tensor(site["value"]).unsqueeze(0)
        return int(site_matrix(v, len(site["fn"].event_shape), nest, data_dim, 1, b).shape[-1])

    nodes = []
    for name in layout.summed_guide:
        site = gtr.nodes[name]
        nodes.append(Node(name, "discrete", dims(site), levels=int(site["fn"].enumerate_support(expand=False).shape[0])))
    for name, size in zip(layout.sites, layout.sizes):
        nodes.append(Node(name, "latent", int(size), point_mass=is_point_mass(gtr.nodes[name]["fn"])))
    for name in layout.observed:
        nodes.append(Node(name, "observed", dims(mtr.nodes[name])))
    return nodes


@dataclass
class SiteDraw:
    """One node's term at k draws: (k, b) float64, whether it is an analytic KL, which summed sites it reads."""

    term: torch.Tensor
    analytic: bool
    summed_over: Tuple[bool, ...]  # one per Layout.summed_model_only


def analytic_kl(q, p, value, layout: Layout, k: int, b: int, exact: bool = True):
    """(per-dim KL (k, b, size) or None, total KL (k, b) or None) of a latent site, where torch/Pyro knows them.

    Per dimension only where q and p factorize over the site's elements (not
    a joint full-covariance q, and not a point mass, whose "KL" is -log p(z));
    nothing where the analytic KL is not ``exact`` for this guide.  Masks are
    kept: the KL of a masked site is not its base's.
    """
    if not exact:
        return None, None
    nest, data_dim, event_dim = layout.nest, layout.data_dim, len(q.event_shape)
    qb, pb = elementwise_base(q), elementwise_base(p)
    elem = None
    if qb.event_shape == () and pb.event_shape == () and not isinstance(qb, dist.Delta):
        try:
            elem = site_matrix(torch.broadcast_to(kl_divergence(qb, pb), value.shape), event_dim, nest, data_dim, k, b)
        except NotImplementedError:
            elem = None
    if elem is not None:
        return elem, elem.sum(-1)  # one KL evaluation serves the total and the split
    try:
        return None, per_point(kl_divergence(q, p), nest, data_dim, k, b)
    except NotImplementedError:
        return None, None


def site_draws(model, x, gtr, mtr, layout: Layout, nodes: Sequence[Node], k: int, b: int,
               inexact=frozenset()) -> Tuple[SiteDraw, ...]:
    """Every node's term at the k draws of one trace pair (see the module docstring), in the order of ``nodes``.

    Without discrete guide sites the terms are read off ``gtr``/``mtr``
    themselves.  With them, guide and model are traced again once per joint
    value of those sites, in the particle plate if the pair was: the guide's
    latents drawn before the first of them keep their values in ``gtr``, the
    others are drawn afresh given each value, and each value's terms are
    weighted by its q probability.  ``inexact``: sites whose analytic KL would
    be biased for this guide.
    """
    if not layout.summed_guide:
        return _at_draws(model, x, gtr, mtr, layout, nodes, k, b, inexact)
    plate = k if in_particles(gtr) else None
    discrete = [n for n in nodes if n.kind == "discrete"]
    order = list(gtr.nodes)
    first = min(order.index(n.name) for n in discrete)
    # what the guide drew before any discrete site cannot depend on one: the sum over values is given it
    before = {n: gtr.nodes[n]["value"] for n in order[:first] if is_latent(gtr.nodes[n])}
    total, analytic, reads = [None] * len(nodes), [True] * len(nodes), [None] * len(nodes)
    for levels in itertools.product(*(range(n.levels) for n in discrete)):
        g, m = _pair_at_levels(model, x, {n.name: i for n, i in zip(discrete, levels)}, before, plate, layout.nest)
        log_w = sum(per_point(g.nodes[n.name]["fn"].log_prob(g.nodes[n.name]["value"]), layout.nest,
                              layout.data_dim, k, b).double() for n in discrete)
        w = log_w.exp()
        for i, d in enumerate(_at_draws(model, x, g, m, layout, nodes, k, b, inexact)):
            # a value q never draws adds nothing, even where its terms are infinite (log q = -inf)
            part = torch.where(w > 0, w * d.term, torch.zeros_like(d.term))
            total[i] = part if total[i] is None else total[i] + part
            analytic[i] = analytic[i] and d.analytic
            reads[i] = d.summed_over if reads[i] is None else tuple(a or c for a, c in zip(reads[i], d.summed_over))
    return tuple(SiteDraw(t, a, r) for t, a, r in zip(total, analytic, reads))


class _AtLevels(Messenger):
    """Set named discrete sample sites to one of their values (the i-th of ``enumerate_support``) instead of a draw,
    and other named sites to given values; the sites stay latent (a draw, not an observation).

    Entered outside every plate, so it sees the site's distribution expanded
    to all of them and gives the value the shape a draw would have.
    """

    def __init__(self, levels: Dict[str, int], values: Dict[str, torch.Tensor]):
        super().__init__()
        self.levels, self.values = levels, values

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        name = msg["name"]
        if name in self.levels:
            msg["value"] = msg["fn"].enumerate_support(expand=True)[self.levels[name]]
        elif name in self.values:
            msg["value"] = self.values[name]


def _pair_at_levels(model, x, levels: Dict[str, int], values: Dict[str, torch.Tensor], k: Optional[int], nest: int):
    """(guide trace with its discrete sites at ``levels`` and the ``values`` given, model trace replayed against it),
    k draws if given."""

    def plate():
        return particles(k, nest) if k is not None else nullcontext()

    with _AtLevels(levels, values), plate():
        gtr = poutine.trace(model.guide).get_trace(**x)
    with plate():
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(**x)
    return gtr, mtr


def _at_draws(model, x, gtr, mtr, layout: Layout, nodes: Sequence[Node], k: int, b: int,
              inexact) -> Tuple[SiteDraw, ...]:
    """The nodes' terms at the draws of one trace pair (every latent of the guide at its value in ``gtr``)."""
    nest, data_dim = layout.nest, layout.data_dim
    log_p, reads = _model_terms(model, x, mtr, layout, k, b)
    out = []
    for node in nodes:
        name = node.name
        if node.kind == "observed":
            out.append(SiteDraw(log_p[name], True, reads[name]))
            continue
        site = gtr.nodes[name]
        q, value = site["fn"], site["value"]
        kl = None
        if node.kind == "latent" and not any(reads[name]):
            # a density a summed site enters is a mixture: no closed-form KL
            _, kl = analytic_kl(q, mtr.nodes[name]["fn"], value, layout, k, b, exact=name not in inexact)
        if kl is not None:
            out.append(SiteDraw(kl.double(), True, reads[name]))
        else:
            log_q = per_point(q.log_prob(value), nest, data_dim, k, b).double()
            out.append(SiteDraw(log_q - log_p[name], False, reads[name]))
    return tuple(out)


def _model_terms(model, x, mtr, layout: Layout, k: int, b: int):
    """Per model site, (k, b) float64 log p(site | ...), the model's own discrete sites summed out; and which it reads.

    With nothing to sum, each site's own log-density.  Otherwise the model is
    traced with those sites enumerated (every other latent at its value in
    ``mtr``); a site whose density does not read them keeps its own
    log-density, and those that do are scored by the chain rule of the
    summed model, in order (latents, then observations):
    log p(s_i | s_<i) = log sum_c p(c) prod_{j <= i} p(s_j | ...) - the same up to i - 1.
    """
    nest, data_dim = layout.nest, layout.data_dim
    own = layout.summed_model_only
    latent = [n for n, site in mtr.nodes.items() if is_latent(site) and n not in own]
    names = latent + list(layout.observed)
    if not own:
        return ({n: per_point(mtr.nodes[n]["fn"].log_prob(mtr.nodes[n]["value"]), nest, data_dim, k, b).double()
                 for n in names}, {n: () for n in names})
    plate = k if in_particles(mtr) else None
    etr = enumerated_trace(model.model, x, {n: mtr.nodes[n]["value"] for n in latent}, own, nest, plate)
    width = nest + 1  # the particle plate and the model's plates, right-aligned; enumerated values left of them
    inner = tuple(d for d in range(-nest, 0) if d != data_dim)

    def aligned(name):
        site = etr.nodes[name]
        lp = site["fn"].log_prob(site["value"]).double()
        while lp.dim() < width:
            lp = lp.unsqueeze(0)
        # summed over the plates other than the data's: a summed site is one value per point (build_layout)
        return lp.sum(inner, keepdim=True) if inner else lp

    def lse(t):
        return t.logsumexp(tuple(range(t.dim() - width))) if t.dim() > width else t

    enum_dims = [etr.nodes[c]["infer"]["_enumerate_dim"] for c in own]
    acc = sum(aligned(c) for c in own)
    before = lse(acc)  # log sum_c p(c) = 0, up to rounding
    log_p, reads = {}, {}
    for n in names:
        lp = aligned(n)
        reads[n] = tuple(lp.dim() >= -d and lp.shape[d] > 1 for d in enum_dims)
        if any(reads[n]):
            acc = acc + lp
            after = lse(acc)
            lp, before = after - before, after
        else:
            lp = lp.reshape(lp.shape[lp.dim() - width:])
        log_p[n] = per_point(lp, nest, data_dim, k, b)
    return log_p, reads
