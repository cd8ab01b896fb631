"""The trace layer: what each site of a model and guide is, and its log density per data point.

Objectives, evaluation, diagnostics and the report read Pyro traces only
through this module, so a rule (what is latent, what a point-mass guide is,
which plate holds the data) is decided once.  Observed sites are kept as a
list so that models with several observed sites can be added later.  How
the sites of a model line up per point is its layout (``infer/layout.py``),
found once from a trace; the densities here read its plates.

Discrete latent sites with a finite support (Categorical, OneHotCategorical,
Bernoulli), in the guide or in the model alone (a mixture's component), are
not coordinates of z: they are summed out exactly, by Pyro's parallel
enumeration in dims left of the particle plate (:func:`marginal_densities`),
and ``Layout.summed`` names them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol

import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from torch.distributions import biject_to, constraints, transform_to

from ..data import batch
from ..errors import PyroVAEError
from .modules import eval_mode
from .probe import first_line, likely_cause
from .rng import forked_rng

PARTICLE_PLATE = "_particles"
DATA_PLATE = "data"

__all__ = [
    "PARTICLE_PLATE", "DATA_PLATE", "is_density_site", "is_subsample", "is_factor", "is_observed", "is_latent",
    "has_density", "is_point_mass", "elementwise_base", "site_mask", "node_mask", "masked_like", "FoldMasks", "particles",
    "trace_pair",
    "data_plate", "plate_dims", "Plates", "site_matrix", "per_point", "site_sum", "PointDensities", "point_densities",
    "array_sites", "observed_name",
    "cycle_rows", "simulated", "base_support", "is_real", "is_enumerable", "summing", "in_particles",
    "enumerated_trace", "enum_site_sum", "marginal_densities",
]


class Plates(Protocol):
    """What a density reads off a model's layout (``infer/layout.Layout``): where its plates are, what is summed.

    A protocol rather than the layout itself because the layout is built from
    these densities (``build_layout`` takes them once to check the data).
    """

    nest: int  # max plate nesting of model and guide (without the particle plate)
    data_dim: int  # dim of the "data" plate
    summed: List[str]  # discrete sites summed out exactly (see marginal_densities)


# -- what a site is -------------------------------------------------------------------------


def is_subsample(site) -> bool:
    """A plate's subsample record: a sample site with no density of its own."""
    return site["type"] == "sample" and site_is_subsample(site)


def is_density_site(site) -> bool:
    """A sample site with a log-density term, ``pyro.factor`` included (what an objective sums)."""
    return site["type"] == "sample" and not site_is_subsample(site)


def is_factor(site) -> bool:
    """A ``pyro.factor``: a penalty added to the objective, not a density of x or z."""
    return is_density_site(site) and isinstance(site["fn"], dist.Unit)


def is_observed(site) -> bool:
    """An observed sample site: a density of the data."""
    return is_density_site(site) and not is_factor(site) and bool(site["is_observed"])


def is_latent(site) -> bool:
    """A sampled (unobserved) site with a density: a latent variable."""
    return is_density_site(site) and not is_factor(site) and not site["is_observed"]


def has_density(site) -> bool:
    """An observed or latent site: a term of log p(x, z) or log q(z|x)."""
    return is_observed(site) or is_latent(site)


def elementwise_base(fn, through_masks: bool = False):
    """A distribution without its ``Independent``/``expand()`` wrappers (and masks, if asked)."""
    wrappers = (dist.Independent, dist.ExpandedDistribution, torch.distributions.Independent)
    if through_masks:
        wrappers += (dist.MaskedDistribution,)
    while isinstance(fn, wrappers):
        fn = fn.base_dist
    return fn


def is_enumerable(site) -> bool:
    """A latent site with a finite support Pyro can enumerate (Categorical, Bernoulli, ...): summed, never a coordinate."""
    return is_latent(site) and bool(getattr(site["fn"], "has_enumerate_support", False))


def is_point_mass(fn) -> bool:
    """A Delta site.  A guide with ANY point-mass latent has no proposal density to importance-sample with."""
    return isinstance(elementwise_base(fn, through_masks=True), dist.Delta)


def _base_support(registry):
    """A wrapping support's transform: that of the support it wraps (a mixture's is its components')."""
    return lambda constraint: registry(constraint.base_constraint)


# A MixtureSameFamily's support wraps its components' support, and torch registers no transform for the
# wrapper: a mixture prior's latent then fails in every unconstrained-space method (AutoNormal, NUTS, the
# reference's whitening) with "Cannot transform MixtureSameFamilyConstraint".  Its values are the
# components' values, so the components' transform is the right one; registered once, only where torch
# has none, so that Pyro's own AutoNormal and NUTS pick it up too.
_WRAPPING_SUPPORTS = [c for c in (getattr(constraints, "MixtureSameFamilyConstraint", None),) if c is not None]
for _registry in (biject_to, transform_to):
    for _support in _WRAPPING_SUPPORTS:
        try:
            _registry(_support(constraints.real))
        except NotImplementedError:
            _registry.register(_support, _base_support(_registry))


def base_support(support):
    """A latent's support without the wrappers that keep its values (independent, a mixture's)."""
    while isinstance(support, (constraints.independent, *_WRAPPING_SUPPORTS)):
        support = support.base_constraint
    return support


def is_real(support) -> bool:
    """Real-valued support (independent() and mixture wrappers removed): unconstrained = constrained."""
    return base_support(support) is constraints.real


# -- tracing ------------------------------------------------------------------------------------


def particles(k: int, nest: int):
    """The outer plate that vectorizes ``k`` draws, left of the model's ``nest`` plates."""
    return pyro.plate(PARTICLE_PLATE, k, dim=-(nest + 1))


@contextmanager
def _maybe_particles(k: Optional[int], nest: int):
    if k is None:
        yield
    else:
        with particles(k, nest):
            yield


def trace_pair(model, x, k: Optional[int] = None, nest: int = 0, guide: Optional[Callable] = None):
    """(guide trace, model trace replayed against it); ``k`` draws vectorized in an outer plate if given.

    ``guide`` replaces ``model.guide`` (a per-point fit, say).
    """
    guide = guide or model.guide
    with _maybe_particles(k, nest):
        gtr = poutine.trace(guide).get_trace(**x)
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(**x)
    return gtr, mtr


def data_plate(traces) -> Optional[str]:
    """The data plate's name: "data", else the one outermost plate every observed site sits in (Pyro's DMM calls
    its plate "z_minibatch"); None if there is none."""
    common = None
    dims: Dict[str, int] = {}
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            names = {f.name for f in site["cond_indep_stack"] if f.dim is not None}
            if DATA_PLATE in names:
                return DATA_PLATE
            dims.update({f.name: f.dim for f in site["cond_indep_stack"] if f.dim is not None})
            if is_observed(site):
                common = names if common is None else common & names
    if not common:
        return None
    return min(common, key=lambda n: dims[n])  # the outermost: the plate over data points, not one nested in it


def plate_dims(model, traces) -> tuple:
    """(max plate nesting, dim of the data plate) read off traces of the model and the guide."""
    nest, data_dim = 0, None
    traces = list(traces)
    name = data_plate(traces)
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            for f in site["cond_indep_stack"]:
                if f.dim is not None:
                    nest = max(nest, -f.dim)
                if f.name == name:
                    data_dim = f.dim
    if data_dim is None:
        raise PyroVAEError(
            f"{type(model).__name__}: no sample site is inside pyro.plate('data', ...): "
            "put the observations (and the local latents) in a plate named 'data'"
        )
    return nest, data_dim


def site_mask(fn) -> Optional[torch.Tensor]:
    """The mask a site's distribution carries (``.mask(m)``, under or over ``.to_event``) as a bool tensor of the
    site's value shape (True: counted); None when nothing is masked."""
    while True:
        if isinstance(fn, dist.MaskedDistribution):
            m = fn._mask
            events = len(fn.event_shape)
            full = tuple(fn.batch_shape) + tuple(fn.event_shape)
            if isinstance(m, bool):
                return None if m else torch.zeros(full, dtype=torch.bool)
            return m.expand(fn.batch_shape).reshape(tuple(fn.batch_shape) + (1,) * events).expand(full)
        if isinstance(fn, (dist.Independent, torch.distributions.Independent, dist.ExpandedDistribution)):
            fn = fn.base_dist
            continue
        return None


def node_mask(node) -> Optional[torch.Tensor]:
    """A traced site's mask as a bool tensor of its value's shape (True: counted), from ``.mask()`` on its
    distribution and ``poutine.mask`` around it (a mask of its batch shape) together; None when nothing is masked."""
    value = node["value"]
    keep, any_mask = None, False
    for m in (site_mask(node["fn"]), node.get("mask")):
        if m is None or isinstance(m, bool) and m:
            continue
        m = torch.as_tensor(m, dtype=torch.bool, device=value.device)
        m = m.reshape(m.shape + (1,) * (value.dim() - m.dim())).expand(value.shape)
        keep = m if keep is None else keep & m
        any_mask = True
    return keep if any_mask else None


class FoldMasks(Messenger):
    """``poutine.mask(mask=m)`` around a program's sites carried onto each site's distribution, as ``.mask(m)``.

    Pyro's ELBOs read a site's ``msg["mask"]`` beside its ``fn``, but the library's densities are each site's
    ``fn.log_prob(value)`` (and its KLs ``fn``'s): entered around every trace an evaluation or a diagnosis makes
    (outside the program, so after the program's own masks have marked the message), it puts the mask where
    those read it, so a padded step masked either way counts for nothing, and :func:`site_mask` sees it.  The
    message keeps its mask: Pyro's own ELBOs and samplers mask the same elements once more, which changes nothing.
    """

    def _pyro_sample(self, msg):
        mask, fn = msg.get("mask"), msg["fn"]
        if mask is None or isinstance(mask, bool) or not hasattr(fn, "mask"):
            return
        mask = torch.as_tensor(mask, dtype=torch.bool, device=mask.device)
        if torch.broadcast_shapes(mask.shape, fn.batch_shape) != fn.batch_shape:
            return  # a mask wider than the site's batch: Pyro broadcasts the density up, which no fn can say
        msg["fn"] = fn.mask(mask)


def masked_like(fn, mask: torch.Tensor):
    """``fn`` (a guide's law of a site, maybe with draws in dims on the left) with the model's ``mask`` of the
    site's value shape (:func:`site_mask`): its log density counts what the model's counts (a whole event where
    any of its elements is)."""
    events = 0
    base = fn
    while isinstance(base, (dist.Independent, torch.distributions.Independent)):
        events += base.reinterpreted_batch_ndims
        base = base.base_dist
    if not hasattr(base, "mask"):  # a torch distribution without Pyro's methods
        return fn
    own = len(base.event_shape)
    if own:
        mask = mask.reshape(tuple(mask.shape[: mask.dim() - own]) + (-1,)).any(-1)
    mask = mask.expand(torch.broadcast_shapes(mask.shape, base.batch_shape))
    return base.mask(mask).to_event(events) if events else base.mask(mask)


# -- alignment: site tensors -> per-point matrices -----------------------------------------------


def site_matrix(value, event_dim: int, nest: int, data_dim: int, k: int, b: int,
                leading_draw: bool = False) -> torch.Tensor:
    """A site's values (or log-densities, ``event_dim=0``) -> (k, b, flattened dims).

    Dim 0 is the draw dim.  Batch dims are right-aligned to the plates (the
    draw plate at -(nest+1)), so missing leading dims are broadcast dims of
    size 1; with ``leading_draw=True`` dim 0 is a draw dim stacked in front of
    a site's value (MCMC samples) and missing plate dims go after it.  The
    data plate sits at ``data_dim``; every other plate and event dim is
    flattened.
    """
    v = torch.as_tensor(value)
    while v.dim() - event_dim < nest + 1:
        v = v.unsqueeze(1 if leading_draw else 0)
    bd = v.dim() - event_dim  # batch dims, the draw dim included
    if bd > nest + 1:
        raise PyroVAEError(
            f"a sample site has {bd - 1} batch dims but the model declares only {nest} plates: "
            "declare every batch dim with pyro.plate or move it into the event with .to_event()"
        )
    v = v.movedim(bd + data_dim, 1)
    v = v.expand(k, b, *v.shape[2:])
    return v.reshape(k, b, -1)


def per_point(log_prob, nest: int, data_dim: int, k: int, b: int) -> torch.Tensor:
    """Sum a site's log-density over every dim but draws and data points -> (k, b)."""
    return site_matrix(log_prob, 0, nest, data_dim, k, b).sum(-1)


# -- per-point densities -----------------------------------------------------------------------


def site_sum(tr, keep, layout: Plates, k: int, b: int, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
    """The per-point log-density, (k, b), of the sites of ``tr`` that ``keep`` selects; None if it selects none.

    Each site's per-point sum is cast to ``dtype`` before the sites are added
    (``None``: the sites' own dtype).
    """
    total = None
    for site in tr.nodes.values():
        if keep(site):
            lp = per_point(site["fn"].log_prob(site["value"]), layout.nest, layout.data_dim, k, b)
            lp = lp if dtype is None else lp.to(dtype)
            total = lp if total is None else total + lp
    return total


@dataclass
class PointDensities:
    """Per-point log densities of ``k`` draws, each (k, b)."""

    log_lik: torch.Tensor  # log p(x | z): every observed site
    log_prior: torch.Tensor  # log p(z): every latent site of the model
    log_q: torch.Tensor  # log q(z | x): every latent site of the guide

    @property
    def log_joint(self) -> torch.Tensor:
        """log p(x, z)."""
        return self.log_lik + self.log_prior


def point_densities(gtr, mtr, layout: Plates, k: int, b: int, dtype: Optional[torch.dtype] = None) -> PointDensities:
    """log p(x|z), log p(z), log q(z|x) per point from a trace pair, each site cast to ``dtype`` (see site_sum)."""
    parts = [site_sum(mtr, is_observed, layout, k, b, dtype), site_sum(mtr, is_latent, layout, k, b, dtype),
             site_sum(gtr, is_latent, layout, k, b, dtype)]
    ref = next(p for p in parts if p is not None)  # build_layout saw an observed site
    return PointDensities(*[torch.zeros_like(ref) if p is None else p for p in parts])


# -- named arrays: which array a site observes, and what a model simulated -----------------------------


@torch.no_grad()
def array_sites(model, data) -> Dict[str, str]:
    """{array name: sample site} for the named arrays the model observes, found by identity in one trace on two rows.

    Pyro's M2 example observes site "x" with its argument ``xs``, so names
    alone cannot say which array a site scores.  Arrays that are only inputs
    to networks (a conditional VAE's label) map to nothing.  The program runs
    in eval mode (a batch norm takes one row then, and its statistics stay as
    they are); a program that fails even so is reported with its own error
    when the observations cannot be found by name.
    """
    if len(data) == 1:  # one array: the observations
        return {next(iter(data)): model.obs_site}
    g = min(batch.groups(data), key=lambda g: len(g["absent"]))  # rows with every array present
    few = batch.without(batch.rows(data, g["rows"][:2]), g["absent"])
    try:
        with forked_rng(batch.reference(few).device), pyro.validation_enabled(False), eval_mode(model):
            tr = poutine.trace(poutine.block(model.model, hide_types=["param"])).get_trace(**few)
    except PyroVAEError:
        raise
    except Exception as e:
        if model.obs_site in data:  # found by name: the failure is reported where the program runs in earnest
            return {model.obs_site: model.obs_site}
        raise PyroVAEError(f"{type(model).__name__}'s model fails on the first rows of the data ({type(e).__name__}: "
                           f"{first_line(e)[:300]}), so the array its site {model.obs_site!r} observes cannot be "
                           f"found: {likely_cause(e)}") from None
    out = {}
    for site_name, site in tr.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        v = site["value"]
        for name, t in few.items():
            if v is t or (torch.is_tensor(v) and v.shape == t.shape and v.data_ptr() == t.data_ptr()):
                out[name] = site_name
            elif _is_view_of(v, t):
                out.setdefault(name, site_name)  # one of several sites that observe a part each (a step of a sequence)
    return out


def _is_view_of(v, t) -> bool:
    """``v`` is a part of ``t`` (a slice: the DMM observes ``mini_batch[:, t - 1, :]`` at its step t's site)."""
    return (torch.is_tensor(v) and torch.is_tensor(t) and v.numel() < t.numel() and v.numel() > 0
            and v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr())


def observed_name(model, data, sites: Optional[Dict[str, str]] = None) -> Optional[str]:
    """Which named array holds the observations of ``model.obs_site`` (the only one, when there is one).

    ``sites``: :func:`array_sites` of the data, when the caller has it already.
    """
    if len(data) == 1:
        return next(iter(data))
    if model.obs_site in data:
        return model.obs_site
    for name, site in (array_sites(model, data) if sites is None else sites).items():
        if site == model.obs_site:
            return name
    raise PyroVAEError(f"the data's arrays ({', '.join(data)}) do not include the observations of site "
                       f"{model.obs_site!r}: name that array {model.obs_site!r}, or pass it unchanged as obs=")


def cycle_rows(data, n: int):
    """``n`` rows: the data's rows in turn (row j is row j mod b), e.g. simulations that keep each point's inputs."""
    b = batch.num_rows(data)
    return batch.rows(data, torch.arange(n, device=batch.reference(data).device) % b)


def simulated(model, template, trace, sites: Optional[Dict[str, str]] = None):
    """The data a model simulated in ``trace`` (run under ``poutine.uncondition`` on ``template``): every array
    a sample site observes takes that site's draw; conditioning inputs stay as given."""
    sites = dict(array_sites(model, template) if sites is None else sites)
    sites.setdefault(observed_name(model, template, sites), model.obs_site)
    out = dict(template)
    for name, site in sites.items():
        out[name] = trace.nodes[site]["value"].detach().to(template[name].dtype)
    return out


# -- discrete sites summed exactly -------------------------------------------------------------------


def summing(fn, names):
    """``fn`` with the named sample sites marked for parallel enumeration (whatever strategy they asked for)."""
    names = frozenset(names)
    return poutine.infer_config(fn, lambda msg: {"enumerate": "parallel"} if msg["name"] in names else {})


def in_particles(tr) -> bool:
    """Whether a trace was taken inside the particle plate (the vectorized draws)."""
    return any(f.name == PARTICLE_PLATE for site in tr.nodes.values() if site["type"] == "sample"
               for f in site["cond_indep_stack"])


def enumerated_trace(fn, x, values: Dict[str, torch.Tensor], names, nest: int, k: Optional[int] = None):
    """A trace of ``fn`` on ``x`` with ``values`` conditioned and the ``names`` sites enumerated in parallel.

    Enumerated values are stacked in dims left of the particle plate (at
    ``-(nest + 2)`` and further left), so the ``k`` draws' plate (None: no
    particle plate) and the model's plates keep their dims.
    """
    program = poutine.enum(summing(poutine.condition(fn, data=values), names), first_available_dim=-(nest + 2))
    with _maybe_particles(k, nest):
        return poutine.trace(program).get_trace(**x)


def enum_site_sum(tr, keep, layout: Plates, k: int, b: int, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
    """Per point, (k, b): the log of the sum over every enumerated value of exp(the kept sites' log-densities).

    :func:`site_sum` of a trace from :func:`enumerated_trace`.  Each site's
    log-density is summed over its plates other than the draws and the data
    points first, then the sites are added (broadcasting over the enumerated
    dims) and the enumerated dims are log-sum-exped.  That order is the exact
    sum because a summed site lies in the data plate alone (build_layout
    checks it): its value is shared by every element of any other plate.
    """
    width = layout.nest + 1  # the particle plate and the model's plates, right-aligned
    inner = tuple(d for d in range(-layout.nest, 0) if d != layout.data_dim)
    total = None
    for site in tr.nodes.values():
        if not keep(site):
            continue
        lp = site["fn"].log_prob(site["value"])
        lp = lp if dtype is None else lp.to(dtype)
        while lp.dim() < width:
            lp = lp.unsqueeze(0)
        if inner:
            lp = lp.sum(inner, keepdim=True)
        total = lp if total is None else total + lp
    if total is None:
        return None
    if total.dim() > width:
        total = total.logsumexp(tuple(range(total.dim() - width)))
    return per_point(total, layout.nest, layout.data_dim, k, b)


def marginal_densities(model, x, gtr, mtr, layout: Plates, k: int, b: int, dtype: Optional[torch.dtype] = None,
                       guide: Optional[Callable] = None, guide_sums: bool = True) -> PointDensities:
    """log p(x|z), log p(z), log q(z|x) per point, (k, b), of the continuous latents z, the discrete sites summed.

    ``gtr``/``mtr`` are a trace pair (:func:`trace_pair`, ``k`` draws, in the
    particle plate or not); z is the guide's draw in them.  With y the
    guide's discrete sites and c the model's own:

    - log p(x, z) = log sum_{y,c} p(x, y, c, z), log p(z) = log sum_{y,c} p(y, c, z);
    - log q(z|x) = log sum_y q(y|x) q(z|x, y), the density of the z the
      guide draws (y ~ q(y|x), then z ~ q(z|x, y)) with y forgotten.

    Then p(x, z) / q(z|x) is an importance weight of z alone, unbiased for
    p(x) (E_q(z|x)[p(x, z) / q(z|x)] = p(x)), independent across draws
    (so the delta-method s.e. and PSIS k-hat apply to it as to any weight),
    and never more variable than the weight p(x, y, c, z) / q(y, z|x) of
    the sampled y and c (a Rao-Blackwellisation: it is that weight's
    conditional expectation given z).  ``guide_sums=False`` keeps the
    guide's y at its draw (the model summed over c alone, log q(y, z|x)
    from the guide's trace): the terms of the ELBO of a model whose c is
    enumerated and whose guide samples y.  With nothing to sum, these are
    :func:`point_densities`.
    """
    # a site the guide does not sample (the model's own, or any, for a guide fitted without them) is summed
    # in the model; one it samples is summed in both, or kept at its draw in both with guide_sums=False
    summed = [s for s in layout.summed if guide_sums or s not in gtr.nodes]
    if not summed:
        return point_densities(gtr, mtr, layout, k, b, dtype)
    guide = guide or model.guide
    plate = k if in_particles(mtr) else None
    in_guide = [s for s in summed if s in gtr.nodes]
    latent = {n for n, site in mtr.nodes.items() if is_latent(site)}
    # every latent of the model that is not summed keeps the value of the trace pair (the guide's draw)
    values = {n: mtr.nodes[n]["value"] for n in latent if n not in summed}
    etr = enumerated_trace(model.model, x, values, summed, layout.nest, plate)
    joint = enum_site_sum(etr, has_density, layout, k, b, dtype)
    prior = enum_site_sum(etr, lambda site: has_density(site) and site["name"] in latent, layout, k, b, dtype)
    if in_guide:
        gvalues = {n: site["value"] for n, site in gtr.nodes.items() if is_latent(site) and n not in in_guide}
        gtr_e = enumerated_trace(guide, x, gvalues, in_guide, layout.nest, plate)
        log_q = enum_site_sum(gtr_e, has_density, layout, k, b, dtype)
    else:
        log_q = site_sum(gtr, is_latent, layout, k, b, dtype)
    prior = torch.zeros_like(joint) if prior is None else prior
    log_q = torch.zeros_like(joint) if log_q is None else log_q
    return PointDensities(joint - prior, prior, log_q)
