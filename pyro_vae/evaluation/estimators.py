"""Honest evaluation of any model that follows the protocol: per-point ELBO, importance-sampled log p(x), active units.

Every number is per data point, in nats, from the model's and the guide's
sample sites, unscaled (no minibatch factor, no beta; ``pyro.factor`` sites
are not densities and are left out):

- ``elbo = reconstruction - kl``: E_q[log p(x|z)] minus KL(q(z|x) || p(z)),
  each the sum of its nodes' terms (``site_terms``, one per sample site, see
  evaluation/nodes.py), so the nodes split every point's ELBO: a latent's
  KL is analytic where torch/Pyro knows it and it is exact for this guide
  (not where a site's prior reads a latent the guide draws given that site,
  see infer/dependence.py, nor where a model's own discrete site enters its
  prior), else Monte Carlo; ``kl_method`` is "analytic" when every latent's
  is (each node's ``method`` says which); a guide's discrete sites are summed
  over their values exactly, not sampled; ``kl_mc`` is the Monte Carlo KL of
  the draws log p(x) uses;
- ``log_likelihood``: log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x);
  discrete latent sites (a guide's y, a mixture prior's component c) are
  summed out exactly, p(x, z) = sum_{y,c} p(x, y, c, z) and q(z|x) =
  sum_y q(y|x) q(z|x, y), so z alone is importance-sampled (unbiased, and
  never noisier than weighting the sampled y; ``summed_sites`` names them);
  ``log_likelihood_se`` is the Monte Carlo standard error of the mean
  (delta method per point), ``iw_ess_*`` the importance ESS out of K,
  ``iw_khat_*`` the PSIS Pareto k-hat of each point's K weights (Vehtari
  et al. 2024): above 0.7 the weights are so heavy-tailed that the
  estimate is biased low by more than its s.e., which then understates
  the error;
  ``log_likelihood_warning`` says so, and what to do, when any point has
  k-hat above 0.7 or an ESS below 5 (``None`` otherwise);
- ``log_likelihood_prior``: log (1/K) sum_k p(x|z_k), z_k ~ p(z), with its
  s.e. and ESS: the only log p(x) a point-mass guide has;
- ``active_units``: dimensions with Cov_x(E_q[z_j|x]) above
  ``active_units_threshold``, with ``posterior_mean_variance`` and
  ``kl_per_dim`` (ordered as ``latent_names``);
- ``reconstruction_mse``: squared error of the decoder mean at the guide's
  mean;
- ``nodes``: each node's term averaged over the points, its s.e. and method,
  and a continuous latent's active units and KL per dimension (its columns
  of ``posterior_mean_variance`` and ``kl_per_dim``).

Draws are taken in chunks of (particles x points) under an element
``budget``, keeping only running sums per point and the largest few log-weights
(the tail PSIS fits, about 3 sqrt K of them), so memory does not grow
with K; a program that does not broadcast over a leading draw dim is traced
one draw at a time, each trace over as many points as the budget allows.
Evaluation runs without gradients, in eval mode, on its own RNG
stream: it never changes parameters, buffers or the caller's RNG.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import pyro.distributions as dist
from pyro import poutine
from pyro.poutine.messenger import Messenger

from ..errors import PyroVAEError
from ..infer.psis import pareto_khat, tail_draws
from ..infer.psis import KHAT_BAD
from ..models.params import runs_model
from ..models.protocol import _eval_mode, _model_dtype, _modules, model_device
from ..infer.dependence import inexact_kl_sites
from ..infer.rng import isolated_rng
from ..data import batch
from ..progress import progress_bar
from ..serialize import to_plain
from .nodes import Node, NodeSummary, SiteDraw, SiteTerm, analytic_kl, node_specs, site_draws
from ..infer.sites import (Layout, PointDensities, build_layout, elementwise_base, is_observed, marginal_densities,
                           particles, point_densities, repeat_points, site_matrix, site_sum, trace_draws)

DEFAULT_IW_SAMPLES = 1000
# elements of the widest per-chunk tensor (particles x points x widest layer)
DEFAULT_BUDGET = 2**22
ACTIVE_UNIT_THRESHOLD = 0.01
# below this importance ESS a point's estimate and s.e. rest on a handful of draws
IW_ESS_MIN = 5

__all__ = [
    "evaluate", "evaluate_points", "PointwiseEvaluation", "SiteTerm", "NodeSummary", "concat_points",
    "importance_summary", "test_elbo",
    "plan_chunks", "DEFAULT_IW_SAMPLES", "DEFAULT_BUDGET", "ACTIVE_UNIT_THRESHOLD", "IW_ESS_MIN",
]


def _width(model, x) -> int:
    """The widest per-point tensor: the widest Linear layer or the data."""
    w = max(int(t.shape[-1]) if t.dim() > 1 else 1 for t in batch.tensors(x))
    for top in _modules(model):
        for m in top.modules():
            if isinstance(m, torch.nn.Linear):
                w = max(w, m.in_features, m.out_features)
    lik = getattr(model, "likelihood", None)
    return max(int(getattr(lik, "out_features", 0)), w, 1)


def plan_chunks(num_points: int, num_samples: int, width: int, budget: int = DEFAULT_BUDGET) -> Tuple[int, int]:
    """(particles per chunk, points per chunk) with particles x points x width <= budget where possible.

    Particles are chunked first (all K draws of a point before the next
    point), so K = 5000 on any number of points needs only ``budget`` elements
    per tensor; one particle of one point is the floor.
    """
    k_chunk = max(1, min(num_samples, budget // max(width, 1)))
    b_chunk = max(1, min(num_points, budget // (max(width, 1) * k_chunk)))
    return k_chunk, b_chunk


def _plan(n: int, k: int, width: int, d: int, broadcasts: bool, budget: int) -> Tuple[int, int]:
    """(particles, points) per chunk: :func:`plan_chunks`, or, for draws traced one at a time, as many points
    as one draw's trace may hold and as many draws as their stacked per-point terms (about 2 d + 4 numbers) allow."""
    if broadcasts:
        return plan_chunks(n, k, width, budget)
    b_chunk = plan_chunks(n, 1, width, budget)[1]
    return max(1, min(k, budget // (b_chunk * (2 * d + 4)))), b_chunk


class _HeapTrimmer:
    """Hand freed heap memory back to the OS every few chunks (glibc only; a no-op elsewhere).

    Each chunk allocates and frees tensors of ~budget elements; with several
    threads' arenas glibc's heaps fragment and the resident size grows far
    beyond what is live, which ``malloc_trim`` gives back.
    """

    EVERY = 16  # chunks between trims

    def __init__(self):
        self.count = 0
        self.trim = _malloc_trim()

    def tick(self):
        self.count += 1
        if self.trim is not None and self.count % self.EVERY == 0:
            self.trim(0)

    def release(self):
        if self.trim is not None:
            self.trim(0)


def _malloc_trim():
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


# -- streaming per-point statistics -------------------------------------------------------------


class _Moments:
    """Running mean and variance per point of (k, b) draws, shifted for float64 accuracy."""

    def __init__(self):
        self.count = 0
        self.shift = self.s1 = self.s2 = None

    def add(self, v: torch.Tensor):
        v = v.double()
        if self.shift is None:
            self.shift = v.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
        d = v - self.shift
        self.s1 += d.sum(0)
        self.s2 += (d * d).sum(0)
        self.count += v.shape[0]

    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / self.count

    def var_of_mean(self) -> torch.Tensor:
        """Monte Carlo variance of the mean (NaN with one draw: it cannot be estimated)."""
        if self.count < 2:
            return torch.full_like(self.shift, float("nan"))
        var = (self.s2 - self.s1**2 / self.count) / (self.count - 1)
        return var.clamp_min(0.0) / self.count


class _LogMeanExp:
    """Running log-sum-exp of the weights and of their squares, per point."""

    def __init__(self, keep: bool = False):
        self.count = 0
        self.lse1 = self.lse2 = self.top = None
        self.kept = [] if keep else None

    def add(self, log_w: torch.Tensor):
        log_w = log_w.double()
        l1, l2, top = torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), log_w.max(0).values
        if self.lse1 is None:
            self.lse1, self.lse2, self.top = l1, l2, top
        else:
            self.lse1 = torch.logaddexp(self.lse1, l1)
            self.lse2 = torch.logaddexp(self.lse2, l2)
            self.top = torch.maximum(self.top, top)
        self.count += log_w.shape[0]
        if self.kept is not None:
            self.kept.append(log_w.T.cpu())

    def result(self):
        """(log mean w, delta-method variance of it, ESS, largest normalized weight) per point."""
        k = self.count
        est = self.lse1 - math.log(k)
        sum_w2 = torch.exp(self.lse2 - 2 * self.lse1)  # sum of squared normalized weights
        # Var[log mean w] ~= Var[w] / (K E[w]^2), estimated by (K sum w_norm^2 - 1) / K
        if k > 1:
            var = ((k * sum_w2 - 1.0) / k).clamp_min(0.0)
        else:
            var = torch.full_like(est, float("nan"))
        return est, var, 1.0 / sum_w2, torch.exp(self.top - self.lse1)


def _tail_size(num_draws: int) -> int:
    """How many of the largest log-weights PSIS looks at: its M tail draws and the cutoff below them.

    ArviZ's psislw (r_eff = 1) fits the M largest weights above the (M+1)-th
    largest (M = tail_draws(K): ceil(min(K/5, 3 sqrt K)) on ArviZ 0.x, one fewer
    at most on 1.x); nothing else enters k-hat.
    """
    return min(num_draws, tail_draws(num_draws) + 1)


class _Tail:
    """The largest log-weights of each point, in a buffer of fixed size (PSIS needs no others)."""

    def __init__(self, num_draws: int):
        self.num_draws = num_draws
        self.size = _tail_size(num_draws)
        self.top = None  # (size, b), largest first

    def add(self, log_w: torch.Tensor):
        t = log_w.double() if self.top is None else torch.cat([self.top, log_w.double()], 0)
        self.top = t.topk(min(self.size, t.shape[0]), dim=0).values

    def khat(self, ess: torch.Tensor) -> torch.Tensor:
        """PSIS k-hat per point, exactly as of all K weights: NaN for K = 1, -inf where all K are equal."""
        k_total, b = self.num_draws, self.top.shape[1]
        if k_total < 2:
            return torch.full((b,), float("nan"), dtype=torch.float64)
        top = self.top.T.cpu().numpy()
        out = np.empty(b)
        rows = max(1, 2**20 // k_total)  # bounded scratch: rows x K at a time
        for i in range(0, b, rows):
            t = top[i : i + rows]
            # the draws below the tail only fix the cutoff: copies of the cutoff give the same fit
            full = np.repeat(t[:, -1:], k_total, axis=1)
            full[:, : t.shape[1]] = t
            out[i : i + rows] = pareto_khat(full)
        k = torch.as_tensor(out, dtype=torch.float64)
        # equal weights (q is the posterior up to a constant) have no tail to fit: bounded, k = -inf
        return torch.where(ess.cpu().double() >= k_total * (1 - 1e-9), torch.tensor(-math.inf, dtype=torch.float64), k)


def importance_summary(log_w: torch.Tensor):
    """Per point, from (K, b) log-weights: log mean w, the delta-method variance of it, and the ESS.

    The variance is NaN for K = 1, where it cannot be estimated.
    """
    acc = _LogMeanExp()
    acc.add(log_w)
    est, var, ess, _ = acc.result()
    return est, var, ess


# -- one chunk of draws ----------------------------------------------------------------------------


def _dist_mean(fn) -> Optional[torch.Tensor]:
    """Mean of a site's distribution, or None where torch has none (e.g. flows)."""
    base = fn
    while isinstance(base, (dist.Independent, torch.distributions.Independent)):
        base = base.base_dist
    try:
        if isinstance(base, torch.distributions.Categorical):
            # torch's Categorical.mean is NaN by convention; the mean level is well defined
            levels = torch.arange(base.probs.shape[-1], dtype=base.probs.dtype, device=base.probs.device)
            return base.probs @ levels
        m = fn.mean
    except NotImplementedError:
        return None
    return m  # may hold NaN (e.g. a Cauchy): it then shows up as a missing (None) metric


@dataclass
class _DrawTerms:
    """Per-point terms of k draws z ~ q(z|x)."""

    dens: PointDensities  # (k, b) log p(x|z), log p(z), log q(z|x)
    sites: Tuple[SiteDraw, ...]  # (k, b) per node (evaluation/nodes.py): the ELBO's terms, site by site
    kl_dims: Optional[torch.Tensor]  # (k, b, latent dims); None where q or p does not factorize
    kl_dims_analytic: bool
    mean: torch.Tensor  # (k, b, latent dims): E_q[z | x]
    # (k, b) float64 importance log-weights log p(x, z) - log q(z|x) with the discrete sites summed
    # (see marginal_densities); None where there are none, and the weight is dens.log_joint - dens.log_q
    log_w: Optional[torch.Tensor] = None


def _draw_terms(model, x, k: int, layout: Layout, nodes: List[Node], per_dim: bool, inexact=frozenset()) -> _DrawTerms:
    """Per-point terms of k draws z ~ q(z|x): (k, b) densities, per-node terms, per-dim pieces, means.

    ``inexact``: sites whose analytic KL would be biased for this guide (their KL is Monte Carlo).
    """
    return trace_draws(model, x, k, layout,
                       lambda gtr, mtr, k: _terms(gtr, mtr, x, k, layout, nodes, per_dim, inexact, model))


def _terms(gtr, mtr, x, k: int, layout: Layout, nodes: List[Node], per_dim: bool, inexact=frozenset(),
           model=None) -> _DrawTerms:
    """The terms of :func:`_draw_terms` read off one trace pair of k draws."""
    b = batch.num_rows(x)
    nest, data_dim = layout.nest, layout.data_dim
    dens = point_densities(gtr, mtr, layout, k, b)
    log_w = None
    if layout.summed:
        marg = marginal_densities(model, x, gtr, mtr, layout, k, b, dtype=torch.float64)
        log_w = marg.log_joint - marg.log_q
        if layout.summed_model_only:
            # replay drew the model's own discrete sites from their prior, whose density is not in log q: the
            # Monte Carlo KL is that of the model with them summed out (what TraceEnum_ELBO maximizes)
            dens = marg if not layout.summed_guide else marginal_densities(
                model, x, gtr, mtr, layout, k, b, dtype=torch.float64, guide_sums=False)
    sites = site_draws(model, x, gtr, mtr, layout, nodes, k, b, inexact)
    kl_dims, kl_dims_analytic, means = ([] if per_dim else None), True, []
    for name in layout.sites:
        site = gtr.nodes[name]
        q, value = site["fn"], site["value"]
        event_dim = len(q.event_shape)
        p = mtr.nodes[name]["fn"]
        if kl_dims is not None:
            qb, pb = elementwise_base(q), elementwise_base(p)
            # per-dimension KL needs q and p to factorize over the site's elements (see analytic_kl)
            if not (qb.event_shape == () and pb.event_shape == () and not isinstance(qb, dist.Delta)):
                kl_dims = None
            else:
                elem, _ = analytic_kl(q, p, value, layout, k, b, exact=name not in inexact)
                if elem is None:
                    kl_dims_analytic = False
                    mc = qb.log_prob(value) - pb.log_prob(value)
                    elem = site_matrix(torch.broadcast_to(mc, value.shape), event_dim, nest, data_dim, k, b)
                kl_dims.append(elem)
        m = _dist_mean(q)
        m = torch.broadcast_to(m, value.shape) if m is not None else value
        means.append(site_matrix(m, event_dim, nest, data_dim, k, b))
    if layout.summed_model_only:
        # p(z) is a mixture over the summed sites: no closed-form KL per dimension
        kl_dims = None
    ref = batch.reference(x)
    return _DrawTerms(
        dens=dens,
        sites=sites,
        kl_dims=torch.cat(kl_dims, -1) if kl_dims else None,
        kl_dims_analytic=kl_dims_analytic,
        mean=torch.cat(means, -1) if means else torch.zeros(k, b, 0, dtype=ref.dtype, device=ref.device),
        log_w=log_w,
    )


def _prior_log_lik(model, x, k: int, layout: Layout) -> torch.Tensor:
    """(k, b) log p(x | z_k) with z_k ~ p(z): the model run on its own, without the guide."""
    b = batch.num_rows(x)
    if not layout.broadcasts:
        mtr = batch.call(poutine.trace(model.model).get_trace, repeat_points(x, k))
        return site_sum(mtr, is_observed, layout, 1, k * b, dtype=torch.float64).reshape(k, b)
    with particles(k, layout.nest):
        mtr = batch.call(poutine.trace(model.model).get_trace, x)
    return site_sum(mtr, is_observed, layout, k, b, dtype=torch.float64)


class _MeanPath(Messenger):
    """Set every latent sample site to its distribution's mean instead of a draw (a discrete one: its mode)."""

    def __init__(self, names):
        super().__init__()
        self.names = frozenset(names)

    def _pyro_sample(self, msg):
        if msg["name"] in self.names and not msg["is_observed"] and msg["value"] is None:
            # a discrete site's mean is not one of its values (a level between two classes)
            m = msg["fn"].mode if getattr(msg["fn"], "has_enumerate_support", False) else _dist_mean(msg["fn"])
            if m is not None:
                msg["value"] = torch.broadcast_to(m, msg["fn"].shape())


def _reconstruction_error(model, x, layout: Layout) -> Optional[torch.Tensor]:
    """Per point, mean over the data dims of (x - E[x | z = E_q[z|x]])^2, or None without a decoder mean."""
    b = batch.num_rows(x)
    with _MeanPath(layout.sites):
        gtr = batch.call(poutine.trace(model.guide).get_trace, x)
    mtr = batch.call(poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace, x)
    site = mtr.nodes[model.obs_site]
    m = _dist_mean(site["fn"])
    if m is None:
        return None
    err = (site["value"] - m) ** 2
    return site_matrix(err, len(site["fn"].event_shape), layout.nest, layout.data_dim, 1, b)[0].double().mean(-1)


# -- results ---------------------------------------------------------------------------------------


@dataclass
class PointwiseEvaluation:
    """Per-point results of :func:`evaluate_points`: CPU float64 tensors, one entry per data point.

    ``*_var`` entries are the Monte Carlo variance of that point's estimate
    (NaN where one draw cannot estimate it).  Optional entries are ``None``
    when not computed: importance sampling for a point-mass guide or with
    ``iw_samples=None``, the prior estimator with ``prior_samples=0``,
    per-dimension KL for a guide that does not factorize per dimension,
    reconstruction error when the likelihood has no mean.  ``site_terms``
    splits each point's ``elbo`` by sample site (:class:`SiteTerm`).
    """

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_analytic: bool
    kl_mc: torch.Tensor
    kl_mc_var: torch.Tensor
    elbo_var: torch.Tensor
    elbo_samples: int
    log_likelihood: Optional[torch.Tensor]
    log_likelihood_var: Optional[torch.Tensor]
    iw_ess: Optional[torch.Tensor]
    iw_max_weight: Optional[torch.Tensor]
    iw_samples: int
    log_likelihood_prior: Optional[torch.Tensor]
    log_likelihood_prior_var: Optional[torch.Tensor]
    prior_ess: Optional[torch.Tensor]
    prior_samples: int
    latent_names: List[str]
    posterior_mean: torch.Tensor  # (n, latent dims): E_q[z | x]
    kl_per_dim: Optional[torch.Tensor]  # (n, latent dims)
    kl_per_dim_analytic: bool
    reconstruction_mse: Optional[torch.Tensor]
    point_mass: bool
    seconds: float
    log_weights: Optional[torch.Tensor] = None  # (n, K), only with keep_log_weights=True
    iw_khat: Optional[torch.Tensor] = None  # PSIS k-hat of each point's K importance weights
    # discrete latent sites summed out exactly (not among latent_names): log p(x) and its weights are of z alone
    summed_sites: List[str] = field(default_factory=list)
    # the ELBO node by node (evaluation/nodes.py): observed terms minus latent terms is ``elbo``, point by point
    site_terms: List[SiteTerm] = field(default_factory=list)

    @property
    def num_points(self) -> int:
        return int(self.elbo.shape[0])

    def posterior_mean_variance(self) -> torch.Tensor:
        """Cov_x(E_q[z_j | x]) per latent dimension (sample variance over the points)."""
        if self.num_points < 2:
            return torch.zeros(self.posterior_mean.shape[1], dtype=torch.float64)
        return self.posterior_mean.var(0, unbiased=True)

    def active_units(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> torch.Tensor:
        """Boolean mask of the latent dimensions with Cov_x(E_q[z_j]) > threshold."""
        return self.posterior_mean_variance() > threshold

    def nodes(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> List[NodeSummary]:
        """Each node's term averaged over the points, with its s.e., and a continuous latent's active units."""
        n = self.num_points
        variance = self.posterior_mean_variance()
        out = []
        for t in self.site_terms:
            cols = [self.latent_names.index(name) for name in t.latent_names]
            active = pmv = kl_dims = None
            if t.kind == "latent":
                active = int((variance[cols] > threshold).sum())
                pmv = [_finite(v) for v in variance[cols]]
                if self.kl_per_dim is not None:
                    kl_dims = [_finite(v) for v in self.kl_per_dim[:, cols].mean(0)]
            out.append(NodeSummary(
                name=t.name, kind=t.kind, method=t.method, term=_finite(t.term.mean()),
                # MC standard error of a mean over points of independent per-point estimates
                se=_finite(t.var.sum().sqrt() / n), dims=int(t.dims), active_units=active,
                posterior_mean_variance=pmv, kl_per_dim=kl_dims, latent_names=list(t.latent_names),
                summed_over=list(t.summed_over)))
        return out

    def summary(self, threshold: float = ACTIVE_UNIT_THRESHOLD) -> Dict[str, object]:
        """The JSON-ready metrics (plain floats/ints/lists; non-finite values become None)."""
        n = self.num_points

        def mean(t):
            return None if t is None else _finite(t.mean())

        def se(var):
            # MC standard error of a mean over points of independent per-point estimates
            return None if var is None else _finite(var.sum().sqrt() / n)

        def lo(t):
            return None if t is None else _finite(t.min())

        out = {
            "elbo": mean(self.elbo),
            "elbo_se": se(self.elbo_var),
            "reconstruction": mean(self.reconstruction),
            "kl": mean(self.kl),
            "kl_analytic": bool(self.kl_analytic),
            # a point mass has no entropy term: its "KL" is -log p(z) at the code (MAP), say so
            "kl_method": "point_mass" if self.point_mass else ("analytic" if self.kl_analytic else "monte_carlo"),
            "kl_mc": mean(self.kl_mc),
            "kl_mc_se": se(self.kl_mc_var),
            "elbo_samples": int(self.elbo_samples),
            "log_likelihood": mean(self.log_likelihood),
            "log_likelihood_se": se(self.log_likelihood_var),
            "iw_samples": int(self.iw_samples),
            "iw_ess_mean": mean(self.iw_ess),
            "iw_ess_min": lo(self.iw_ess),
            "iw_khat_max": None if self.iw_khat is None else _finite(self.iw_khat.max()),
            "iw_khat_median": None if self.iw_khat is None else _finite(np.median(self.iw_khat.numpy())),
            "iw_khat_above_0_7": None if self.iw_khat is None else int((self.iw_khat > KHAT_BAD).sum()),
            "log_likelihood_warning": self.log_likelihood_warning(),
            "log_likelihood_prior": mean(self.log_likelihood_prior),
            "log_likelihood_prior_se": se(self.log_likelihood_prior_var),
            "prior_samples": int(self.prior_samples),
            "prior_ess_mean": mean(self.prior_ess),
            "prior_ess_min": lo(self.prior_ess),
            "latent_dims": len(self.latent_names),
            "latent_names": list(self.latent_names),
            "summed_sites": list(self.summed_sites),
            "active_units": int(self.active_units(threshold).sum()),
            "active_units_threshold": float(threshold),
            "posterior_mean_variance": [_finite(v) for v in self.posterior_mean_variance()],
            "kl_per_dim": None if self.kl_per_dim is None else [_finite(v) for v in self.kl_per_dim.mean(0)],
            "kl_per_dim_analytic": bool(self.kl_per_dim_analytic) if self.kl_per_dim is not None else None,
            "reconstruction_mse": mean(self.reconstruction_mse),
            "nodes": [to_plain(node) for node in self.nodes(threshold)],
            "num_points": int(n),
            "seconds_evaluate": float(self.seconds),
        }
        return out

    def log_likelihood_warning(self) -> Optional[str]:
        """Why the importance-sampled log p(x) and its s.e. cannot be trusted, and what to do; None when they can."""
        if self.iw_khat is None or self.iw_ess is None:
            return None
        n, k = self.num_points, self.iw_samples
        bad = int((self.iw_khat > KHAT_BAD).sum())
        low = int((self.iw_ess < IW_ESS_MIN).sum())
        if not bad and not low:
            return None
        if _tail_size(k) <= 5:  # PSIS fits no tail of 4 draws or fewer: k-hat is infinite
            return (f"K = {k} importance draws are too few to check the weights' tail (PSIS needs K >= 21): "
                    "the log p(x) s.e. cannot be trusted; raise iw_samples")
        why = []
        if bad:
            why.append(f"PSIS k-hat > {KHAT_BAD} for {bad} of {n} points (max {float(self.iw_khat.max()):.2f})")
        if low:
            why.append(f"importance ESS below {IW_ESS_MIN} for {low} of {n} points")
        return ("the log p(x) s.e. cannot be trusted: " + " and ".join(why) + ": the weights are heavy-tailed, so "
                "the estimate is biased low by more than its s.e. there; raise iw_samples (K) or use a guide "
                "closer to the posterior (wider, or a richer family)")

    def to_rows(self) -> List[dict]:
        """One dict per data point (for a CSV): the scalar per-point results."""
        cols = {
            "elbo": self.elbo, "reconstruction": self.reconstruction, "kl": self.kl, "kl_mc": self.kl_mc,
            "log_likelihood": self.log_likelihood,
            "log_likelihood_se": None if self.log_likelihood_var is None else self.log_likelihood_var.sqrt(),
            "iw_ess": self.iw_ess, "iw_max_weight": self.iw_max_weight, "iw_khat": self.iw_khat,
            "log_likelihood_prior": self.log_likelihood_prior,
            "log_likelihood_prior_se": None if self.log_likelihood_prior_var is None else self.log_likelihood_prior_var.sqrt(),
            "prior_ess": self.prior_ess, "reconstruction_mse": self.reconstruction_mse,
        }
        cols = {k: v.tolist() for k, v in cols.items() if v is not None}
        return [{k: v[i] for k, v in cols.items()} for i in range(self.num_points)]


def _finite(v) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


# -- the evaluator -----------------------------------------------------------------------------------


#: draws per point beyond which an evaluation would run for days (and its k-hat tails outgrow memory)
MAX_SAMPLES = 10**7


def _check_count(name: str, value, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    floor = 0 if name == "prior_samples" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < floor:
        raise PyroVAEError(f"{name} must be an integer >= {floor}, got {value!r}: pass {name} >= {floor}")
    if value > MAX_SAMPLES:
        raise PyroVAEError(f"{name} = {value} is more than {MAX_SAMPLES:,} draws a point: pass a smaller count")


@runs_model()
@torch.no_grad()
def evaluate_points(
    model,
    x,
    iw_samples: Optional[int] = DEFAULT_IW_SAMPLES,
    elbo_samples: int = 1,
    seed: int = 0,
    budget: int = DEFAULT_BUDGET,
    *,
    prior_samples: Optional[int] = None,
    reconstruction_error: bool = True,
    keep_log_weights: bool = False,
    progress: Optional[bool] = False,
    shard: Optional[bool] = None,
) -> PointwiseEvaluation:
    """Evaluate ``model`` on the rows of ``x``, keeping every per-point result.

    ``iw_samples`` (K) draws from the guide per point give the importance
    sampled log p(x) and the ELBO; with ``iw_samples=None`` (or a point-mass
    guide, which has no proposal density) the ELBO uses ``elbo_samples``
    draws and there is no importance estimate.  ``prior_samples`` draws from
    the prior per point give the naive estimator (``None``: as many as
    ``iw_samples``; ``0``: skip it).  ``keep_log_weights`` also returns the
    (n, K) importance log-weights (8 n K bytes).  ``progress`` shows a bar
    over the points on stderr (None: on a terminal).  Parameters, optimizer state and the caller's
    RNG streams are left untouched.

    ``shard`` (None: whenever a torchrun process group is running; every rank
    must then call this): each rank evaluates its contiguous block of the points
    with seed ``rank_seed(seed, rank)`` and every rank gets all the points'
    results, in order (training/distributed.py says what that equals).
    """
    from ..models.protocol import check_protocol

    check_protocol(model)
    _check_count("iw_samples", iw_samples, allow_none=True)
    _check_count("elbo_samples", elbo_samples, allow_none=False)
    _check_count("prior_samples", prior_samples, allow_none=True)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise PyroVAEError(f"budget must be a positive number of tensor elements, got {budget!r}")
    t0 = time.perf_counter()
    device = model_device(model)
    x = batch.prepare(x, "evaluation data")
    x = batch.to(x, device, _model_dtype(model, batch.reference(x)))
    if not batch.is_named(x) and x.dim() != 2:
        raise PyroVAEError(f"evaluation data must be a non-empty (points, columns) matrix, got shape {tuple(x.shape)}")
    absent = [g["absent"] for g in batch.groups(x)]
    if len(absent) > 1:
        names = sorted({n for a in absent for n in a})
        raise PyroVAEError(f"evaluation data: {', '.join(names)} is given for some rows and missing (-1 or NaN) for others: "
                           "evaluate the two sets of rows separately, or leave the array out to marginalise it")
    x = batch.without(x, absent[0])
    n = batch.num_rows(x)
    if shard is not False:
        from ..training import distributed

        group = distributed.current()
        if group.active and n >= group.world_size:  # fewer points than ranks: each rank does them all
            part = evaluate_points(model, batch.rows(x, distributed.shard(n, group)), iw_samples, elbo_samples,
                                   distributed.rank_seed(seed, group.rank), budget, prior_samples=prior_samples,
                                   reconstruction_error=reconstruction_error, keep_log_weights=keep_log_weights,
                                   progress=progress if group.is_main else False, shard=False)
            return concat_points(distributed.all_gather_objects(part))
    width = _width(model, x)
    with _eval_mode(model), isolated_rng(seed, device):
        layout = build_layout(model, batch.rows(x, slice(0, min(n, 2))))
        inexact = frozenset(inexact_kl_sites(model, batch.rows(x, slice(0, min(n, 2)))))
        nodes = node_specs(model, batch.rows(x, slice(0, min(n, 2))), layout)
        iw = bool(iw_samples) and not layout.point_mass
        # a point mass gives the same "draw" every time: one is exact
        k_total = iw_samples if iw else (1 if layout.point_mass else elbo_samples)
        if prior_samples is None:
            prior_samples = iw_samples or 0
        d = layout.dim
        # one plan for both passes: the prior pass may need more particles than the guide pass
        k_chunk, b_chunk = _plan(n, max(k_total, prior_samples), width, d, layout.broadcasts, budget)
        res = {key: [] for key in ("rec", "kl", "kl_mc", "kl_mc_var", "elbo_var", "ll", "ll_var", "ess", "wmax",
                                   "mean", "kl_dims", "mse", "pll", "pll_var", "pess", "logw", "khat")}
        node_res = [([], []) for _ in nodes]  # per node: its per-point means and variances, chunk by chunk
        node_analytic = [True] * len(nodes)
        node_reads = [(False,) * len(layout.summed_model_only) for _ in nodes]
        observed = [nd.kind == "observed" for nd in nodes]
        per_dim, dims_analytic = d > 0 and not layout.point_mass, True
        heap = _HeapTrimmer()
        bar = progress_bar(n, progress, unit="point", desc="evaluating", leave=False)
        for sl in _chunks(n, b_chunk):
            xb = batch.rows(x, sl)
            nb = batch.num_rows(xb)
            rec, kl_mc, kl_m, elbo_m = _Moments(), _Moments(), _Moments(), _Moments()
            node_m = [_Moments() for _ in nodes]
            lme = _LogMeanExp(keep_log_weights) if iw else None
            tail = _Tail(k_total) if iw else None
            mean_sum = torch.zeros(nb, d, dtype=torch.float64, device=device)
            dim_sum = torch.zeros_like(mean_sum) if per_dim else None
            for ks in _chunks(k_total, k_chunk):
                k = ks.stop - ks.start
                t = _draw_terms(model, xb, k, layout, nodes, per_dim, inexact)
                heap.tick()
                # the reconstruction and the KL are the nodes' terms added up, so the nodes split each point's ELBO
                zero = torch.zeros(k, nb, dtype=torch.float64, device=device)
                obs = sum((nd.term for nd, o in zip(t.sites, observed) if o), zero)
                lat = sum((nd.term for nd, o in zip(t.sites, observed) if not o), zero)
                rec.add(obs)
                kl_m.add(lat)
                elbo_m.add(obs - lat)
                for i, nd in enumerate(t.sites):
                    node_m[i].add(nd.term)
                    node_analytic[i] = node_analytic[i] and nd.analytic
                    node_reads[i] = tuple(a or r for a, r in zip(node_reads[i], nd.summed_over))
                kl_mc.add(t.dens.log_q - t.dens.log_prior)
                w = t.dens.log_lik.double() + t.dens.log_prior.double() - t.dens.log_q.double()
                if t.log_w is not None:
                    w = t.log_w  # the importance weight of z, the discrete sites summed exactly
                if lme is not None:
                    lme.add(w)
                    tail.add(w)
                mean_sum += t.mean.double().sum(0)
                if per_dim:
                    if t.kl_dims is None:
                        per_dim, dim_sum = False, None
                    else:
                        dims_analytic = dims_analytic and t.kl_dims_analytic
                        dim_sum += t.kl_dims.double().sum(0)
            res["rec"].append(rec.mean())
            res["kl"].append(kl_m.mean())
            res["kl_mc"].append(kl_mc.mean())
            res["kl_mc_var"].append(kl_mc.var_of_mean())
            for (means, variances), m in zip(node_res, node_m):
                means.append(m.mean())
                # a point-mass guide draws nothing: its terms are exact, with no Monte Carlo error
                variances.append(torch.zeros_like(m.mean()) if layout.point_mass else m.var_of_mean())
            if layout.point_mass:
                res["elbo_var"].append(torch.zeros(nb, dtype=torch.float64, device=device))
            else:
                # an analytic KL is random only through the draws it is taken at (a guide site that reads
                # another latent, say), so the terms' variance together, per draw
                res["elbo_var"].append(elbo_m.var_of_mean())
            res["mean"].append(mean_sum / k_total)
            if per_dim:
                res["kl_dims"].append(dim_sum / k_total)
            if lme is not None:
                est, var, ess, wmax = lme.result()
                res["ll"].append(est)
                res["ll_var"].append(var)
                res["ess"].append(ess)
                res["wmax"].append(wmax)
                res["khat"].append(tail.khat(ess))
                if keep_log_weights:
                    res["logw"].append(torch.cat(lme.kept, 1))
            if reconstruction_error:
                res["mse"].append(_reconstruction_error(model, xb, layout))
            if prior_samples:
                plme = _LogMeanExp()
                for ks in _chunks(prior_samples, k_chunk):
                    plme.add(_prior_log_lik(model, xb, ks.stop - ks.start, layout))
                    heap.tick()
                est, var, ess, _ = plme.result()
                res["pll"].append(est)
                res["pll_var"].append(var)
                res["pess"].append(ess)
            if bar is not None:
                bar.update(nb)
        heap.release()
        if bar is not None:
            bar.close()

    def cat(key):
        parts = res[key]
        if not parts or any(p is None for p in parts):
            return None
        return torch.cat([p.double().cpu() for p in parts], 0)

    rec_t, kl_t = cat("rec"), cat("kl")
    # the total KL is analytic where every latent's is (a discrete guide site's is an exact sum)
    analytic = all(a or nd.kind == "discrete" for nd, a in zip(nodes, node_analytic) if nd.kind != "observed")
    site_terms = [_site_term(nd, layout, torch.cat([t.cpu() for t in means]), torch.cat([v.cpu() for v in variances]),
                             a, reads)
                  for nd, (means, variances), a, reads in zip(nodes, node_res, node_analytic, node_reads)]
    return PointwiseEvaluation(
        elbo=rec_t - kl_t, reconstruction=rec_t, kl=kl_t, kl_analytic=analytic,
        kl_mc=cat("kl_mc"), kl_mc_var=cat("kl_mc_var"), elbo_var=cat("elbo_var"), elbo_samples=int(k_total),
        log_likelihood=cat("ll"), log_likelihood_var=cat("ll_var"), iw_ess=cat("ess"), iw_max_weight=cat("wmax"),
        iw_samples=int(iw_samples) if iw else 0,
        log_likelihood_prior=cat("pll"), log_likelihood_prior_var=cat("pll_var"), prior_ess=cat("pess"),
        prior_samples=int(prior_samples),
        latent_names=layout.latent_names, posterior_mean=cat("mean"),
        kl_per_dim=cat("kl_dims") if per_dim else None, kl_per_dim_analytic=per_dim and dims_analytic,
        reconstruction_mse=cat("mse") if reconstruction_error else None,
        point_mass=layout.point_mass, seconds=time.perf_counter() - t0,
        log_weights=cat("logw") if keep_log_weights and iw else None,
        iw_khat=cat("khat") if iw else None,
        summed_sites=list(layout.summed),
        site_terms=site_terms,
    )


def _site_term(node: Node, layout: Layout, term: torch.Tensor, var: torch.Tensor, analytic: bool,
               reads: Tuple[bool, ...]) -> SiteTerm:
    """A node's per-point results, its method named (see :class:`SiteTerm`)."""
    if node.kind == "observed":
        method = "point_mass" if layout.point_mass else "monte_carlo"
    elif node.kind == "discrete":
        method = "exact_sum"
    elif node.point_mass:
        method = "point_mass"
    else:
        method = "analytic" if analytic else "monte_carlo"
    names = []
    if node.kind == "latent":
        i = layout.sites.index(node.name)
        start = sum(layout.sizes[:i])
        names = layout.latent_names[start:start + layout.sizes[i]]
    return SiteTerm(name=node.name, kind=node.kind, method=method, dims=node.dims, term=term.double(),
                    var=var.double(), latent_names=list(names),
                    summed_over=[c for c, r in zip(layout.summed_model_only, reads) if r])


def concat_points(parts: List[PointwiseEvaluation]) -> PointwiseEvaluation:
    """Evaluations of consecutive blocks of points as one (per-point tensors joined; the wall time is the longest)."""
    first = parts[0]
    joined = {}
    for f in dataclasses.fields(first):
        values = [getattr(p, f.name) for p in parts]
        if isinstance(values[0], torch.Tensor):
            joined[f.name] = torch.cat(values, 0)
        elif f.name == "site_terms":  # one list of nodes per block, in the same order
            joined[f.name] = [dataclasses.replace(node, term=torch.cat([v.term for v in same], 0),
                                                  var=torch.cat([v.var for v in same], 0))
                              for node, same in zip(values[0], zip(*values))]
        elif f.name == "seconds":
            joined[f.name] = max(values)
        else:  # settings of the evaluation, the same for every block
            joined[f.name] = values[0]
    return PointwiseEvaluation(**joined)


def evaluate(
    model,
    x,
    iw_samples: Optional[int] = DEFAULT_IW_SAMPLES,
    elbo_samples: int = 1,
    seed: int = 0,
    budget: int = DEFAULT_BUDGET,
    *,
    prior_samples: Optional[int] = None,
    reconstruction_error: bool = True,
    progress: Optional[bool] = False,
) -> Dict[str, object]:
    """The metrics of :func:`evaluate_points` as a JSON-ready dict (see the module docstring).

    ``log_likelihood`` is ``None`` for a point-mass (delta) guide, where
    importance sampling has no proposal density, and when ``iw_samples`` is
    ``None`` (ELBO only); ``log_likelihood_prior`` is ``None`` with
    ``prior_samples=0``.
    """
    return evaluate_points(
        model, x, iw_samples, elbo_samples, seed, budget,
        prior_samples=prior_samples, reconstruction_error=reconstruction_error, progress=progress,
    ).summary()


@torch.no_grad()
def test_elbo(model, x: torch.Tensor, seed: int = 0, budget: int = DEFAULT_BUDGET) -> float:
    """The per-point test ELBO alone (one draw per point), for training curves."""
    return evaluate_points(model, x, iw_samples=None, elbo_samples=1, seed=seed, budget=budget,
                           prior_samples=0, reconstruction_error=False).summary()["elbo"]


test_elbo.__test__ = False  # not a pytest test, despite the name
