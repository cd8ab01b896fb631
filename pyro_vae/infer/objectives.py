"""Objectives: a name -> a Pyro ELBO, plus the KL-weight (beta) handler.

All three are Pyro ELBO classes and all expose ``differentiable_loss``, so the
trainer can check the loss and gradients for NaN/Inf *before* the optimizer
step (Pyro's ``SVI.step`` steps immediately).

``trace`` and ``meanfield`` are Pyro's ``Trace_ELBO`` / ``TraceMeanField_ELBO``
with one change: their ``differentiable_loss`` reads nothing back to the host.
Pyro's versions call ``.item()`` on every site's log-density and ``warn_if_nan``
on the loss (plus a backward hook doing the same), which on CUDA is 3-5
device-to-host syncs per step and makes CUDA-graph capture impossible.  The
trainer checks loss and gradients itself, so those checks are redundant.
Traces, sample-site densities, analytic KLs and the surrogate are Pyro's; for
guides with non-reparameterized sites the Pyro estimator is used unchanged.
With Pyro validation off they also skip work the estimator does not use
(:class:`_LazyDensities`): about 4% of a 32-row step.  Pyro 1.9's ``RenyiELBO`` has no
``differentiable_loss``; :class:`IWAE_ELBO` adds one, computed from the same
traces and sample-site densities as ``RenyiELBO.loss``.  ``enum`` is Pyro's
``TraceEnum_ELBO``, the guide's discrete sites enumerated in parallel
(:class:`Enum_ELBO`).

Each objective is fitted to the program once, before training
(``prepare(model, data)``, from one trace of guide and model): the Monte Carlo
objectives refuse a discrete guide site (they would sample it, where ``enum``
sums it out exactly) and meanfield/iwae one without a reparameterized sampler;
meanfield takes the KL by Monte Carlo at the sites where the analytic one would
be biased (infer/dependence.py); enum reads its plate nesting off the trace.
``train.elbo = "auto"`` (the default) names no objective of its own: it is one
of these, chosen per program before training (infer/auto.py).
"""

from __future__ import annotations

import math
import warnings

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO, config_enumerate
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.infer.util import check_fully_reparametrized, get_dependent_plate_dims, is_validation_enabled, torch_sum
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import TransformedDistribution, kl_divergence
from pyro.poutine.messenger import Messenger
from pyro.util import check_if_enumerated

from ..errors import MonteCarloKLWarning, PyroVAEError, did_you_mean
from ..registry import Registry
from ..data import batch
from .auto import AUTO, no_closed_form
from .rng import forked_rng
from .dependence import describe, inexact_kl_sites
from .sites import is_density_site, is_latent, plate_dims, trace_pair

OBJECTIVES: Registry = Registry("objective (train.elbo)")


class _SampledGuide:
    """An objective that samples every guide site: what it refuses to train, found before training starts."""

    #: the objective's name in train.elbo, for messages
    config_name = "trace"
    #: the estimator needs every guide site reparameterized (no score-function terms)
    needs_rsample = False

    def prepare(self, model, data) -> None:
        """Refuse a guide site this objective cannot estimate right, from one trace of guide and model on ``data``."""
        with torch.no_grad():
            gtr, _ = trace_pair(model, data)
        for name, site in gtr.nodes.items():
            if not is_latent(site):
                continue
            kind = type(site["fn"]).__name__
            if getattr(site["fn"], "has_enumerate_support", False):
                raise PyroVAEError(
                    f"guide site {name!r} is discrete ({kind}), which train.elbo = {self.config_name!r} would "
                    "sample: use train.elbo = 'enum', which sums over its values exactly")
            if self.needs_rsample and not site["fn"].has_rsample:
                raise PyroVAEError(
                    f"guide site {name!r} ({kind}) has no reparameterized sampler, which train.elbo = "
                    f"{self.config_name!r} needs: use train.elbo = 'trace' (score-function gradients) or a "
                    "reparameterized distribution")


class IWAE_ELBO(_SampledGuide, RenyiELBO):
    """The importance-weighted bound, ``RenyiELBO(alpha=0)``, with a ``differentiable_loss``.

    Per data point: log (1/K) sum_k p(x, z_k) / q(z_k | x).  Gradients flow by
    reparameterization, which is what Pyro's own surrogate computes for
    reparameterized guides; a non-reparameterized guide site is rejected.

    Minibatch scaling must not happen inside the log-mean-exp (that would
    bound a tempered density), so ``minibatch_scale_inside = False`` tells the
    trainer to run the model unscaled and multiply the loss by N/B afterwards.
    """

    minibatch_scale_inside = False
    config_name = "iwae"
    needs_rsample = True

    def __init__(self, num_particles: int = 1, **kwargs):
        super().__init__(alpha=0, num_particles=num_particles, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        per_particle = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            if is_validation_enabled():
                check_if_enumerated(guide_trace)
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for site in model_trace.nodes.values():
                if is_density_site(site):
                    log_w = log_w + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if is_density_site(site):
                    if not site["fn"].has_rsample:
                        raise ValueError(
                            f"train.elbo = 'iwae' needs a reparameterized guide, but site {name!r} is not"
                        )
                    log_w = log_w - torch_sum(site["log_prob"], sum_dims)
            per_particle.append(log_w)
        if self.vectorize_particles and self.num_particles > 1:
            log_w = per_particle[0]
        else:
            log_w = torch.stack([torch.as_tensor(w) for w in per_particle])
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        return -bound.sum()


def _density_sites(trace):
    """(name, site) for every site with a log-density term, factors included (Pyro prunes subsample sites)."""
    return [(name, site) for name, site in trace.nodes.items() if is_density_site(site)]


def _log_prob_sum(site):
    """``site["log_prob_sum"]`` as ``Trace.compute_log_prob`` sets it, computed when first needed."""
    if "log_prob_sum" not in site:
        log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        site["unscaled_log_prob"] = log_p
        site["log_prob"] = scale_and_mask(log_p, site["scale"], site["mask"])
        site["log_prob_sum"] = site["log_prob"].sum()
    return site["log_prob_sum"]


def _score_parts(site):
    """``site["score_parts"]`` as ``Trace.compute_score_parts`` sets it, computed when first needed."""
    if "score_parts" not in site:
        parts = site["fn"].score_parts(site["value"], *site["args"], **site["kwargs"])
        site["unscaled_log_prob"] = parts.log_prob
        site["score_parts"] = parts.scale_and_mask(site["scale"], site["mask"])
        site["log_prob"] = site["score_parts"].log_prob
        site["log_prob_sum"] = site["log_prob"].sum()
    return site["score_parts"]


class _LazyDensities:
    """Traces for the sync-free objectives: Pyro's own while validation is on, lean after.

    With validation on (the first training step, evaluation, tests) this is
    Pyro's ``get_importance_trace`` with every check.  With it off, the guide is
    traced and the model replayed against it exactly as there, but without the
    two trace copies that prune the plates' subsample sites and without computing
    every site's density up front: each estimator asks for the densities it uses
    (the mean-field ELBO never uses the latent sites' log-densities when the KL is
    analytic, which Pyro computes anyway).  Densities still come from each sample
    site's ``fn.log_prob(value)``, scaled and masked as Pyro does.

    The densities an estimator uses are computed in Pyro's order, every model
    site's before any guide site's (:func:`_in_pyro_order`): autograd sums the
    gradients reaching a draw in the order its consumers were built, so another
    order changes the gradients in the last bits, and a resumed run (whose first
    step is validated, so Pyro's) would drift from a straight one.
    """

    def _get_trace(self, model, guide, args, kwargs):
        if is_validation_enabled() or isinstance(poutine.unwrap(guide), Messenger):
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(*args, **kwargs)
        return model_trace, guide_trace


def _in_pyro_order(model_trace, guide_trace, model_sites=None, guide_sites=None) -> None:
    """The densities of ``model_sites`` then ``guide_sites`` (default: every density site), in trace order, as
    Pyro's ``get_importance_trace`` computes them (see :class:`_LazyDensities` for why the order matters)."""
    for name, site in _density_sites(model_trace):
        if model_sites is None or name in model_sites:
            _log_prob_sum(site)
    for name, site in _density_sites(guide_trace):
        if guide_sites is None or name in guide_sites:
            _score_parts(site)


def _reparameterized(guide_trace) -> bool:
    return all(is_identically_zero(_score_parts(site).score_function) for _, site in _density_sites(guide_trace))


def _pyro_ready(trace, guide: bool):
    """Densities computed (score parts in the guide) and subsample sites pruned, as Pyro's estimators expect."""
    for _, site in _density_sites(trace):
        _score_parts(site) if guide else _log_prob_sum(site)
    return prune_subsample_sites(trace)


class SyncFreeTrace_ELBO(_SampledGuide, _LazyDensities, Trace_ELBO):
    """``Trace_ELBO`` whose ``differentiable_loss`` never synchronizes with the device.

    For a reparameterized guide Pyro's surrogate is sum(model log p) - sum(guide
    entropy terms); its value is the ELBO estimate itself, so the loss is that
    tensor (Pyro adds ``surrogate - surrogate.item()`` = 0 to a float copy).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        total = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _in_pyro_order(model_trace, guide_trace)
            if _reparameterized(guide_trace):
                elbo = 0.0
                for _, site in _density_sites(model_trace):
                    elbo = elbo + _log_prob_sum(site)
                for _, site in _density_sites(guide_trace):
                    entropy = _score_parts(site).entropy_term
                    if not is_identically_zero(entropy):
                        elbo = elbo - entropy.sum()
                particle = -elbo
            else:  # score-function terms: Pyro's estimator as is (it syncs; correctness first)
                loss, surrogate = self._differentiable_loss_particle(_pyro_ready(model_trace, False),
                                                                    _pyro_ready(guide_trace, True))
                particle = loss + (surrogate - surrogate.detach())
            total = total + particle / self.num_particles
        return total


class SyncFreeTraceMeanField_ELBO(_SampledGuide, _LazyDensities, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` (analytic KL where known and exact) without host syncs.

    Same terms as Pyro's ``_differentiable_loss_particle``: observed sites add
    log p, each latent site subtracts KL(q || p) scaled by the guide site's
    scale and mask, or, where no analytic KL is registered or where it would be
    biased (``monte_carlo_sites``, set by :meth:`prepare`), adds log p - log q.
    """

    config_name = "meanfield"
    needs_rsample = True
    #: latent sites whose KL is taken by Monte Carlo: the analytic one would be biased for this guide
    monte_carlo_sites: frozenset = frozenset()

    #: whether :meth:`prepare` checked, site by site, where the analytic KL is exact
    _checked_dependence = False

    def prepare(self, model, data) -> None:
        """Also find the sites whose analytic KL would be biased (infer/dependence.py), and say so once."""
        super().prepare(model, data)
        self._checked_dependence = True
        # where no KL formula exists for the two families (a flow guide, a VampPrior or flow prior) the term is
        # Monte Carlo anyway (below): said here, once per run, not at every step
        with torch.no_grad(), forked_rng(batch.tensors(data)[0].device):  # the training stream stays where it was
            gtr, mtr = trace_pair(model, data)
        by_mc = {s: why for s, why in no_closed_form(gtr, mtr).items() if s not in self.monte_carlo_sites}
        self.monte_carlo_sites = self.monte_carlo_sites | frozenset(by_mc)
        if by_mc:
            warnings.warn(
                f"train.elbo = 'meanfield': {describe(by_mc)}: that KL is Monte Carlo (log q - log p at the "
                "guide's draw), the other sites' stay analytic", MonteCarloKLWarning, stacklevel=3)
        inexact = {s: why for s, why in inexact_kl_sites(model, data).items() if s not in self.monte_carlo_sites}
        # accumulated: each row group of named data (labelled, unlabelled) is a program of its own
        self.monte_carlo_sites = self.monte_carlo_sites | frozenset(inexact)
        if inexact:
            warnings.warn(
                f"train.elbo = 'meanfield': the analytic KL would be biased for {describe(inexact)}: that KL is "
                "Monte Carlo (log q - log p at the guide's draw), the other sites' stay analytic",
                MonteCarloKLWarning, stacklevel=3)

    def _get_trace(self, model, guide, args, kwargs):
        if not self._checked_dependence:
            return super()._get_trace(model, guide, args, kwargs)
        # Pyro warns whenever guide and model order their sites differently (a structured guide samples
        # z1 before z2), because its analytic KL might then be biased.  prepare() has checked exactly which
        # sites that holds for and takes their KL by Monte Carlo (and said so): the guess adds nothing
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Failed to verify mean field restriction")
            return super()._get_trace(model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        total = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            total = total - self._elbo_particle(model_trace, guide_trace) / self.num_particles
        return total

    def _elbo_particle(self, model_trace, guide_trace):
        # the densities used below, in Pyro's order: the observed sites', the Monte Carlo KL terms' (model,
        # then guide) and the auxiliary guide sites'; an analytic KL needs neither density
        mc = {name for name, site in _density_sites(model_trace) if not site["is_observed"]} & self.monte_carlo_sites
        _in_pyro_order(model_trace, guide_trace,
                       {name for name, site in _density_sites(model_trace) if site["is_observed"]} | mc,
                       mc | {name for name, _ in _density_sites(guide_trace) if name not in model_trace.nodes})
        elbo = 0.0
        for name, model_site in _density_sites(model_trace):
            if model_site["is_observed"]:
                elbo = elbo + _log_prob_sum(model_site)
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            try:
                if name in self.monte_carlo_sites:
                    raise NotImplementedError  # the analytic KL here would be biased: the Monte Carlo term below
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                elbo = elbo + _log_prob_sum(model_site) - _score_parts(guide_site).entropy_term.sum()
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            if torch.is_tensor(kl):
                elbo = elbo - kl.sum()
            else:
                elbo = elbo - kl * torch.Size(guide_site["fn"].batch_shape).numel()
        for name, guide_site in _density_sites(guide_trace):  # auxiliary guide sites
            if name not in model_trace.nodes:
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                entropy = _score_parts(guide_site).entropy_term
                if not is_identically_zero(entropy):
                    elbo = elbo - entropy.sum()
        return elbo


def _laws(fn):
    """``fn`` and every distribution it wraps (Independent, masked, expanded, ...), outermost first."""
    while fn is not None:
        yield fn
        fn = getattr(fn, "base_dist", None)


class _BoundGuide(torch.nn.Module):
    """``owner.<name>`` as a module's forward, so ``torch.func.functional_call`` can run the guide with other
    parameter tensors (the owner's own parameters are left untouched)."""

    def __init__(self, method):
        super().__init__()
        self.owner = method.__self__
        self.method = method.__name__

    def forward(self, *args, **kwargs):
        return getattr(self.owner, self.method)(*args, **kwargs)


class STL_ELBO(SyncFreeTrace_ELBO):
    """The path-derivative ("sticking the landing") gradient of the ELBO: Roeder, Wu & Duvenaud (2017).

    The reparameterized ELBO gradient is the path term (through each draw z)
    plus a score term, d log q / d params at fixed z, whose expectation is zero
    but whose variance stays even when q is the exact posterior.  This estimator
    drops it: the guide is traced as usual (z depends on the parameters through
    the reparameterization), then run again, its draws replayed, with every
    parameter of the model's modules detached (``torch.func.functional_call``),
    and the guide term is that re-run's log q(z).  So gradients reach the
    parameters only through z, the dependence of one draw's law on an earlier
    draw (a structured chain) included.  Its expectation is the ELBO gradient;
    at the exact posterior every draw's gradient is zero.

    The value is the ELBO estimate of the same draws, exactly ``trace``'s: the
    surrogate adds ``s - s.detach()`` (zero) to it.  A guide site that is not
    reparameterized, a flow (its transform caches the pre-image computed with
    the live parameters) or parameters outside the model's modules
    (``pyro.param``) are refused by :meth:`prepare`, naming ``trace`` instead.
    """

    config_name = "stl"
    needs_rsample = True

    def prepare(self, model, data) -> None:
        """Also refuse what cannot be detached: a flow site, a guide that is not a module's method, parameters
        that the detached re-run still reaches (checked on one trace: at fixed draws no gradient may flow)."""
        super().prepare(model, data)
        advice = "use train.elbo = 'trace' (the same ELBO, with the score term in its gradient)"
        if not isinstance(getattr(model.guide, "__self__", None), torch.nn.Module):
            raise PyroVAEError("train.elbo = 'stl' runs the guide again with its parameters detached, which needs "
                               f"the guide to be a method of a torch.nn.Module: {advice}")
        # the training stream stays where it was; gradients on, or the check below would pass vacuously
        with forked_rng(batch.tensors(data)[0].device), torch.enable_grad():
            gtr, _ = trace_pair(model, data)
            for name, site in gtr.nodes.items():
                if is_latent(site) and any(isinstance(fn, TransformedDistribution) for fn in _laws(site["fn"])):
                    raise PyroVAEError(
                        f"guide site {name!r} is a flow ({type(site['fn']).__name__}), whose parameters "
                        f"train.elbo = 'stl' cannot detach (its transforms cache their inverse): {advice}")
            fixed = poutine.Trace()
            for name, site in gtr.nodes.items():  # the same draws, cut from the parameters
                if site["type"] == "sample":
                    fixed.add_node(name, **dict(site, value=site["value"].detach()))
            log_q = sum(_log_prob_sum(site) for _, site in _density_sites(self._rerun(model.guide, fixed, (), data, False)))
            # at fixed draws and detached module parameters nothing may still carry a gradient
            reached = torch.is_tensor(log_q) and log_q.requires_grad
        if reached:
            raise PyroVAEError("train.elbo = 'stl' could not detach every parameter of the guide (some live outside "
                               f"the model's torch modules, e.g. pyro.param): {advice}")

    def _rerun(self, guide, guide_trace, args, kwargs, particles: bool = True):
        """The guide's trace with its draws replayed from ``guide_trace`` and its module's parameters detached
        (``particles``: in the vectorized particles' plate, as the trace was drawn; prepare's single trace is not)."""
        bound = _BoundGuide(guide)
        detached = {f"owner.{name}": p.detach() for name, p in bound.owner.named_parameters()}

        def run(*a, **k):
            return torch.func.functional_call(bound, detached, a, k, strict=False)

        if particles and self.vectorize_particles and self.num_particles > 1:
            run = self._vectorized_num_particles(run)
        return poutine.trace(poutine.replay(run, trace=guide_trace), graph_type="flat").get_trace(*args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        total = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _in_pyro_order(model_trace, guide_trace)
            elbo = 0.0
            for _, site in _density_sites(model_trace):
                elbo = elbo + _log_prob_sum(site)
            value = elbo
            for _, site in _density_sites(guide_trace):
                if not site["fn"].has_rsample:  # prepare() refuses these; a program that changed since is refused here
                    raise PyroVAEError(f"guide site {site['name']!r} has no reparameterized sampler, which "
                                       "train.elbo = 'stl' needs: use train.elbo = 'trace'")
                value = value - _log_prob_sum(site)
            rescored = {name: site for name, site in _density_sites(self._rerun(guide, guide_trace, args, kwargs))}
            for name, _ in _density_sites(guide_trace):
                elbo = elbo - _log_prob_sum(rescored[name])
            # the value is the ELBO of these draws exactly; only the gradient is the path derivative's
            particle = -(value.detach() + (elbo - elbo.detach()))
            total = total + particle / self.num_particles
        return total


class Enum_ELBO(TraceEnum_ELBO):
    """Pyro's ``TraceEnum_ELBO``, the guide's discrete sites enumerated in parallel unless the user marked them.

    ``config_enumerate`` keeps an explicit ``infer={"enumerate": ...}`` (a
    sequential site, or one opted out with ``None``) and marks every other
    guide site with enumerable support.  The value is the exact sum over the
    enumerated values (Monte Carlo over the continuous ones).
    """

    config_name = "enum"

    def prepare(self, model, data) -> None:
        """The deepest plate dim of guide and model, from one trace, unless the model declares max_plate_nesting."""
        if self.max_plate_nesting == float("inf"):
            with torch.no_grad():
                traces = trace_pair(model, data)
            # as Pyro's own guess: vectorized particles take one more plate, left of the program's
            self.max_plate_nesting = plate_dims(model, traces)[0] + (1 if self.vectorize_particles else 0)

    def _get_traces(self, model, guide, args, kwargs):
        # A batch of labelled rows has no discrete latent left (the label is observed there): Pyro then warns
        # that nothing is enumerated, and its ELBO is Trace_ELBO's, which is right for that batch
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured for enumeration")
            yield from super()._get_traces(model, config_enumerate(guide, "parallel"), args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """Pyro's, less its checks: the trainer also takes the loss without gradients (the first batch's
        validation, the NaN diagnosis), which Pyro's refuses, and checks the value itself (no host sync)."""
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = elbo + _compute_dice_elbo(model_trace, guide_trace)
        return -torch.as_tensor(elbo) / self.num_particles


@OBJECTIVES.register("trace")
def _trace(num_particles: int = 1, max_plate_nesting=float("inf")):
    return SyncFreeTrace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=max_plate_nesting)


@OBJECTIVES.register("meanfield")
def _meanfield(num_particles: int = 1, max_plate_nesting=float("inf")):
    return SyncFreeTraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                               max_plate_nesting=max_plate_nesting)


@OBJECTIVES.register("iwae")
def _iwae(num_particles: int = 1, max_plate_nesting=float("inf")):
    return IWAE_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                     max_plate_nesting=max_plate_nesting)


@OBJECTIVES.register("stl")
def _stl(num_particles: int = 1, max_plate_nesting=float("inf")):
    return STL_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                    max_plate_nesting=max_plate_nesting)


@OBJECTIVES.register("enum")
def _enum(num_particles: int = 1, max_plate_nesting=float("inf")):
    return Enum_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                     max_plate_nesting=max_plate_nesting)


def make_objective(name: str, num_particles: int = 1, max_plate_nesting=float("inf")):
    """The objective ``name`` names ("auto" is a choice made per program first: infer/auto.py)."""
    if name == AUTO:
        raise PyroVAEError("train.elbo = 'auto' names no objective until it is chosen for a program: "
                           "pyro_vae.infer.auto.choose_objective(model, examples) chooses it (the trainer does)")
    return OBJECTIVES[name](num_particles=num_particles, max_plate_nesting=max_plate_nesting)


def check_objective_name(name: str) -> None:
    """``train.elbo`` names a registered objective or "auto", or one line with "did you mean" (before any data is read)."""
    if name not in OBJECTIVES and name != AUTO:
        names = [AUTO, *OBJECTIVES.names()]
        raise PyroVAEError(f"train.elbo: unknown name {name!r}: {did_you_mean(name, names)}valid: {', '.join(names)}")


class scale_sites(Messenger):
    """Multiply the log-density of the named sample sites by ``scale``.

    ``poutine.scale`` scales every site in its context; the KL weight beta must
    scale only the latent sites (in model and guide alike), which is what this
    does — for built-in and user-written models, which name their latent sites.
    """

    def __init__(self, names, scale: float):
        super().__init__()
        self.names = frozenset(names)
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.names and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.scale
