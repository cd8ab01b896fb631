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
``budget``, keeping only running sums per point (evaluation/streaming.py),
so memory does not grow with K; a program that does not broadcast over a
leading draw dim is traced one draw at a time, each trace over as many points
as the budget allows.  The per-point results are a :class:`PointwiseEvaluation`
(evaluation/results.py).  Evaluation runs without gradients, in eval mode, on
its own RNG stream: it never changes parameters, buffers or the caller's RNG.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

import torch
import pyro.distributions as dist
from pyro import poutine
from pyro.poutine.messenger import Messenger

from ..data import batch
from ..errors import PyroVAEError
from ..infer.dependence import inexact_kl_sites
from ..infer.rng import isolated_rng
from ..infer.layout import Layout, build_layout, repeat_points, trace_draws
from ..infer.sites import (FoldMasks, PointDensities, elementwise_base, is_observed, marginal_densities, particles,
                           point_densities, site_mask, site_matrix, site_sum)
from ..models.pair import takes_pairs
from ..models.params import runs_model
from ..models.protocol import eval_mode, model_dtype, model_modules, check_protocol, model_device
from ..progress import progress_bar
from ..runtime import distributed
from .nodes import Node, SiteDraw, SiteTerm, analytic_kl, node_specs, site_draws
from .quantities import Quantities, read_quantities
from .results import PointwiseEvaluation, concat_points
from .streaming import DEFAULT_BUDGET, HeapTrimmer, LogMeanExp, Moments, Pace, Tail, chunks, plan_draws

DEFAULT_IW_SAMPLES = 1000

__all__ = ["evaluate", "evaluate_points", "test_elbo", "DEFAULT_IW_SAMPLES"]


# -- one chunk of draws ----------------------------------------------------------------------------


def _width(model, x) -> int:
    """The widest per-point tensor: the widest Linear layer or the data."""
    w = max(int(t.shape[-1]) if t.dim() > 1 else 1 for t in batch.tensors(x))
    for top in model_modules(model):
        for m in top.modules():
            if isinstance(m, torch.nn.Linear):
                w = max(w, m.in_features, m.out_features)
    lik = getattr(model, "likelihood", None)
    return max(int(getattr(lik, "out_features", 0)), w, 1)


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
        mtr = poutine.trace(model.model).get_trace(**repeat_points(x, k))
        return site_sum(mtr, is_observed, layout, 1, k * b, dtype=torch.float64).reshape(k, b)
    with particles(k, layout.nest):
        mtr = poutine.trace(model.model).get_trace(**x)
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
    """Per point, mean over the data dims of (x - E[x | z = E_q[z|x]])^2, or None without a decoder mean.

    Elements the observed site masks out (a sequence's padded steps) are no data: the mean is over the rest.
    """
    b = batch.num_rows(x)
    with _MeanPath(layout.sites):
        gtr = poutine.trace(model.guide).get_trace(**x)
    mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(**x)
    site = mtr.nodes[model.obs_site]
    m = _dist_mean(site["fn"])
    if m is None:
        return None
    err = (site["value"] - m) ** 2
    events = len(site["fn"].event_shape)
    err = site_matrix(err, events, layout.nest, layout.data_dim, 1, b)[0].double()
    mask = site_mask(site["fn"])
    if mask is None:
        return err.mean(-1)
    mask = torch.broadcast_to(mask.to(err.device), site["value"].shape)
    keep = site_matrix(mask, events, layout.nest, layout.data_dim, 1, b)[0].to(err.dtype)
    # a row with nothing real has no error to average (NaN, as a mean of no numbers)
    return torch.where(keep > 0, err, torch.zeros_like(err)).sum(-1) / keep.sum(-1)


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


@takes_pairs
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
    log: Optional[Callable[[str], None]] = None,
) -> PointwiseEvaluation:
    """Evaluate ``model`` on the rows of ``x``, keeping every per-point result.

    ``model``: a model object, or a (model, guide) pair of Pyro functions as :func:`~pyro_vae.fit` takes it;
    ``x``: tensors or NumPy arrays (one, or a mapping of named ones).

    ``iw_samples`` (K) draws from the guide per point give the importance
    sampled log p(x) and the ELBO; with ``iw_samples=None`` (or a point-mass
    guide, which has no proposal density) the ELBO uses ``elbo_samples``
    draws and there is no importance estimate.  ``prior_samples`` draws from
    the prior per point give the naive estimator (``None``: as many as
    ``iw_samples``; ``0``: skip it).  ``keep_log_weights`` also returns the
    (n, K) importance log-weights (8 n K bytes).  ``progress`` shows a bar
    over the draws on stderr (None: on a terminal); ``log`` gets a long evaluation's estimated duration after
    its first chunk, and its progress where no bar shows.  Parameters, optimizer state and the caller's
    RNG streams are left untouched.

    ``shard`` (None: whenever a torchrun process group is running; every rank
    must then call this): each rank evaluates its contiguous block of the points
    with seed ``rank_seed(seed, rank)`` and every rank gets all the points'
    results, in order (runtime/distributed.py says what that equals).
    """
    check_protocol(model)
    _check_settings(iw_samples, elbo_samples, prior_samples, budget)
    t0 = time.perf_counter()
    device = model_device(model)
    x = _evaluation_data(model, x, device)
    n = batch.num_rows(x)
    if shard is not False:
        group = distributed.current()
        if group.active and n >= group.world_size:  # fewer points than ranks: each rank does them all
            part = evaluate_points(model, batch.rows(x, distributed.shard(n, group)), iw_samples, elbo_samples,
                                   distributed.rank_seed(seed, group.rank), budget, prior_samples=prior_samples,
                                   reconstruction_error=reconstruction_error, keep_log_weights=keep_log_weights,
                                   progress=progress if group.is_main else False, shard=False,
                                   log=log if group.is_main else None)
            return concat_points(distributed.all_gather_objects(part))
    width = _width(model, x)
    with eval_mode(model), isolated_rng(seed, device), FoldMasks():  # poutine.mask read as .mask()
        plan = _plan(model, x, width, iw_samples, elbo_samples, prior_samples, budget)
        totals = _Totals(plan)
        _draw_chunks(model, x, plan, totals, device, reconstruction_error=reconstruction_error,
                     keep_log_weights=keep_log_weights, progress=progress, log=log)
    return _result(plan, totals, iw_samples, reconstruction_error=reconstruction_error,
                   keep_log_weights=keep_log_weights, t0=t0)


def _check_settings(iw_samples, elbo_samples, prior_samples, budget) -> None:
    """Refuse draw counts and a budget that are not positive integers (a prior count may be 0), in one line each."""
    _check_count("iw_samples", iw_samples, allow_none=True)
    _check_count("elbo_samples", elbo_samples, allow_none=False)
    _check_count("prior_samples", prior_samples, allow_none=True)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise PyroVAEError(f"budget must be a positive number of tensor elements, got {budget!r}")


def _evaluation_data(model, x, device: torch.device):
    """``x`` checked, on the model's device and dtype; an array missing for every row is left out, one missing
    for only some rows refused."""
    x = batch.prepare(x, "evaluation data")
    x = batch.to(x, device, model_dtype(model, batch.reference(x)))
    if len(x) == 1 and next(iter(x.values())).dim() != 2:  # one array: the observations, a matrix
        shape = tuple(next(iter(x.values())).shape)
        raise PyroVAEError(f"evaluation data must be a non-empty (points, columns) matrix, got shape {shape}")
    absent = [g["absent"] for g in batch.groups(x)]
    if len(absent) > 1:
        names = sorted({n for a in absent for n in a})
        raise PyroVAEError(f"evaluation data: {', '.join(names)} is given for some rows and missing (-1 or NaN) for others: "
                           "evaluate the two sets of rows separately, or leave the array out to marginalise it")
    return batch.without(x, absent[0])


@dataclass(frozen=True)
class _Plan:
    """What an evaluation draws, fixed before its first draw: the program's layout and nodes, counts and chunks."""

    layout: Layout
    nodes: List[Node]
    inexact: FrozenSet[str]  # sites whose analytic KL would be biased for this guide (their KL is Monte Carlo)
    observed: Tuple[bool, ...]  # per node: an observed one (a reconstruction term, not a KL term)
    iw: bool  # importance-sampled log p(x): not for a point-mass guide, which has no proposal density
    k_total: int  # guide draws per point
    prior_samples: int  # prior draws per point (0: none)
    k_chunk: int  # particles per chunk
    b_chunk: int  # points per chunk
    quantities: Quantities  # what the numbers are, in the model's names (log p(x|y), ...)


def _plan(model, x, width: int, iw_samples, elbo_samples: int, prior_samples, budget: int) -> _Plan:
    """The plan of an evaluation of ``x``, read off traces of its first rows (on the evaluation's own stream)."""
    n = batch.num_rows(x)
    head = batch.rows(x, slice(0, min(n, 2)))
    layout = build_layout(model, head)
    inexact = frozenset(inexact_kl_sites(model, head))
    nodes = node_specs(model, head, layout)
    iw = bool(iw_samples) and not layout.point_mass
    # a point mass gives the same "draw" every time: one is exact
    k_total = iw_samples if iw else (1 if layout.point_mass else elbo_samples)
    if prior_samples is None:
        prior_samples = iw_samples or 0
    # one plan for both passes: the prior pass may need more particles than the guide pass
    k_chunk, b_chunk = plan_draws(n, max(k_total, prior_samples), width, layout.dim, layout.broadcasts, budget)
    return _Plan(layout=layout, nodes=nodes, inexact=inexact, observed=tuple(nd.kind == "observed" for nd in nodes),
                 iw=iw, k_total=k_total, prior_samples=prior_samples, k_chunk=k_chunk, b_chunk=b_chunk,
                 quantities=read_quantities(model, head, layout))


#: the per-point results kept chunk by chunk of points, joined at the end
_PARTS = ("rec", "kl", "kl_mc", "kl_mc_var", "elbo_var", "ll", "ll_var", "ess", "wmax", "mean", "kl_dims", "mse",
          "pll", "pll_var", "pess", "logw", "khat")


class _Totals:
    """The per-point results of the chunks of points done so far, and what every draw so far agrees on."""

    def __init__(self, plan: _Plan):
        self.parts: Dict[str, list] = {key: [] for key in _PARTS}
        self.node_means: List[list] = [[] for _ in plan.nodes]
        self.node_vars: List[list] = [[] for _ in plan.nodes]
        self.node_analytic = [True] * len(plan.nodes)
        # per node: which of the model's own discrete sites its terms were summed over
        self.node_reads = [(False,) * len(plan.layout.summed_model_only) for _ in plan.nodes]
        # the KL per latent dimension, as long as every draw's q and p factorize over the dimensions
        self.per_dim = plan.layout.dim > 0 and not plan.layout.point_mass
        self.dims_analytic = True

    def cat(self, key: str) -> Optional[torch.Tensor]:
        """One key's per-point results of every chunk, joined on the CPU in float64; None if any chunk has none."""
        parts = self.parts[key]
        if not parts or any(p is None for p in parts):
            return None
        return torch.cat([p.double().cpu() for p in parts], 0)


class _ChunkDraws:
    """Running per-point statistics of one chunk of points over its guide draws, a chunk of particles at a time."""

    def __init__(self, plan: _Plan, nb: int, device: torch.device, per_dim: bool, keep_log_weights: bool):
        self.nb, self.device = nb, device
        self.rec, self.kl_mc, self.kl, self.elbo = Moments(), Moments(), Moments(), Moments()
        self.nodes = [Moments() for _ in plan.nodes]
        self.lme = LogMeanExp(keep_log_weights) if plan.iw else None
        self.tail = Tail(plan.k_total) if plan.iw else None
        self.mean_sum = torch.zeros(nb, plan.layout.dim, dtype=torch.float64, device=device)
        self.dim_sum = torch.zeros_like(self.mean_sum) if per_dim else None

    def add(self, t: _DrawTerms, k: int, plan: _Plan, totals: _Totals) -> None:
        """The terms of k more draws of every point of the chunk."""
        # the reconstruction and the KL are the nodes' terms added up, so the nodes split each point's ELBO
        zero = torch.zeros(k, self.nb, dtype=torch.float64, device=self.device)
        obs = sum((nd.term for nd, o in zip(t.sites, plan.observed) if o), zero)
        lat = sum((nd.term for nd, o in zip(t.sites, plan.observed) if not o), zero)
        self.rec.add(obs)
        self.kl.add(lat)
        self.elbo.add(obs - lat)
        for i, nd in enumerate(t.sites):
            self.nodes[i].add(nd.term)
            totals.node_analytic[i] = totals.node_analytic[i] and nd.analytic
            totals.node_reads[i] = tuple(a or r for a, r in zip(totals.node_reads[i], nd.summed_over))
        self.kl_mc.add(t.dens.log_q - t.dens.log_prior)
        if self.lme is not None:
            w = t.dens.log_lik.double() + t.dens.log_prior.double() - t.dens.log_q.double()
            if t.log_w is not None:
                w = t.log_w  # the importance weight of z, the discrete sites summed exactly
            self.lme.add(w)
            self.tail.add(w)
        self.mean_sum += t.mean.double().sum(0)
        if totals.per_dim:
            if t.kl_dims is None:
                totals.per_dim, self.dim_sum = False, None
            else:
                totals.dims_analytic = totals.dims_analytic and t.kl_dims_analytic
                self.dim_sum += t.kl_dims.double().sum(0)

    def finish(self, plan: _Plan, totals: _Totals, keep_log_weights: bool) -> None:
        """The chunk's per-point results, after all its draws, added to ``totals``."""
        parts = totals.parts
        parts["rec"].append(self.rec.mean())
        parts["kl"].append(self.kl.mean())
        parts["kl_mc"].append(self.kl_mc.mean())
        parts["kl_mc_var"].append(self.kl_mc.var_of_mean())
        for means, variances, m in zip(totals.node_means, totals.node_vars, self.nodes):
            means.append(m.mean())
            # a point-mass guide draws nothing: its terms are exact, with no Monte Carlo error
            variances.append(torch.zeros_like(m.mean()) if plan.layout.point_mass else m.var_of_mean())
        if plan.layout.point_mass:
            parts["elbo_var"].append(torch.zeros(self.nb, dtype=torch.float64, device=self.device))
        else:
            # an analytic KL is random only through the draws it is taken at (a guide site that reads
            # another latent, say), so the terms' variance together, per draw
            parts["elbo_var"].append(self.elbo.var_of_mean())
        parts["mean"].append(self.mean_sum / plan.k_total)
        if totals.per_dim:
            parts["kl_dims"].append(self.dim_sum / plan.k_total)
        if self.lme is not None:
            est, var, ess, wmax = self.lme.result()
            parts["ll"].append(est)
            parts["ll_var"].append(var)
            parts["ess"].append(ess)
            parts["wmax"].append(wmax)
            parts["khat"].append(self.tail.khat(ess))
            if keep_log_weights:
                parts["logw"].append(torch.cat(self.lme.kept, 1))


def _draw_chunks(model, x, plan: _Plan, totals: _Totals, device: torch.device, *, reconstruction_error: bool,
                 keep_log_weights: bool, progress: Optional[bool], log: Optional[Callable[[str], None]]) -> None:
    """Each chunk of points in turn: its guide draws, its reconstruction error and its prior draws, into ``totals``."""
    n = batch.num_rows(x)
    heap = HeapTrimmer()
    # counted in draws, not points: with a large K one point is many chunks, and the bar moves with each
    total = n * (plan.k_total + plan.prior_samples)
    bar = progress_bar(total, progress, unit="draw", unit_scale=True, desc="evaluating", leave=False)
    prior = f" and {plan.prior_samples:,} prior draws" if plan.prior_samples else ""
    pace = Pace(total, f"evaluating {n:,} {plan.quantities.unit}s ({plan.k_total:,} guide draws{prior} each)", log, bar)
    for sl in chunks(n, plan.b_chunk):
        xb = batch.rows(x, sl)
        nb = batch.num_rows(xb)
        draws = _ChunkDraws(plan, nb, device, totals.per_dim, keep_log_weights)
        for ks in chunks(plan.k_total, plan.k_chunk):
            k = ks.stop - ks.start
            draws.add(_draw_terms(model, xb, k, plan.layout, plan.nodes, totals.per_dim, plan.inexact), k, plan, totals)
            heap.tick()
            pace.add(nb * k)
        draws.finish(plan, totals, keep_log_weights)
        if reconstruction_error:
            totals.parts["mse"].append(_reconstruction_error(model, xb, plan.layout))
        if plan.prior_samples:
            est, var, ess = _prior_estimate(model, xb, plan, heap, pace)
            totals.parts["pll"].append(est)
            totals.parts["pll_var"].append(var)
            totals.parts["pess"].append(ess)
    heap.release()
    if bar is not None:
        bar.close()


def _prior_estimate(model, xb, plan: _Plan, heap: HeapTrimmer,
                    pace: Pace) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per point of ``xb``, from its prior draws: log mean p(x|z), the variance of that estimate, and the ESS."""
    acc = LogMeanExp()
    for ks in chunks(plan.prior_samples, plan.k_chunk):
        acc.add(_prior_log_lik(model, xb, ks.stop - ks.start, plan.layout))
        heap.tick()
        pace.add(batch.num_rows(xb) * (ks.stop - ks.start))
    est, var, ess, _ = acc.result()
    return est, var, ess


def _result(plan: _Plan, totals: _Totals, iw_samples: Optional[int], *, reconstruction_error: bool,
            keep_log_weights: bool, t0: float) -> PointwiseEvaluation:
    """The per-point results of every chunk as one :class:`PointwiseEvaluation`."""
    cat, layout, iw, per_dim = totals.cat, plan.layout, plan.iw, totals.per_dim
    rec_t, kl_t = cat("rec"), cat("kl")
    # the total KL is analytic where every latent's is (a discrete guide site's is an exact sum)
    analytic = all(a or nd.kind == "discrete" for nd, a in zip(plan.nodes, totals.node_analytic) if nd.kind != "observed")
    site_terms = [_site_term(nd, layout, torch.cat([t.cpu() for t in means]), torch.cat([v.cpu() for v in variances]),
                             a, reads)
                  for nd, means, variances, a, reads in zip(plan.nodes, totals.node_means, totals.node_vars,
                                                            totals.node_analytic, totals.node_reads)]
    return PointwiseEvaluation(
        elbo=rec_t - kl_t, reconstruction=rec_t, kl=kl_t, kl_analytic=analytic,
        kl_mc=cat("kl_mc"), kl_mc_var=cat("kl_mc_var"), elbo_var=cat("elbo_var"), elbo_samples=int(plan.k_total),
        log_likelihood=cat("ll"), log_likelihood_var=cat("ll_var"), iw_ess=cat("ess"), iw_max_weight=cat("wmax"),
        iw_samples=int(iw_samples) if iw else 0,
        log_likelihood_prior=cat("pll"), log_likelihood_prior_var=cat("pll_var"), prior_ess=cat("pess"),
        prior_samples=int(plan.prior_samples),
        latent_names=layout.latent_names, posterior_mean=cat("mean"),
        kl_per_dim=cat("kl_dims") if per_dim else None, kl_per_dim_analytic=per_dim and totals.dims_analytic,
        reconstruction_mse=cat("mse") if reconstruction_error else None,
        point_mass=layout.point_mass, seconds=time.perf_counter() - t0,
        log_weights=cat("logw") if keep_log_weights and iw else None,
        iw_khat=cat("khat") if iw else None,
        summed_sites=list(layout.summed),
        site_terms=site_terms,
        quantities=plan.quantities,
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
