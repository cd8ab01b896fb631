"""The trace layer: what each site of a model and guide is, how sites line up per data point, their log densities.

Objectives, evaluation, diagnostics and the report read Pyro traces only
through this module, so a rule (what is latent, what a point-mass guide is,
which plate holds the data) is decided once.  Observed sites are kept as a
list so that models with several observed sites can be added later.

k draws per point are one trace with the draws in an outer particle plate;
a program that does not broadcast over that leading dim (``view(-1, d)``,
``z[:, 0]``) is found once, by :func:`build_layout`, and traced one draw at
a time into the same (k, b, ...) matrices (:func:`stack_draws`).

Discrete latent sites with a finite support (Categorical, OneHotCategorical,
Bernoulli), in the guide or in the model alone (a mixture's component), are
not coordinates of z: they are summed out exactly, by Pyro's parallel
enumeration in dims left of the particle plate (:func:`marginal_densities`),
and ``Layout.summed`` names them.
"""

from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, TypeVar

import numpy as np
import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from torch.distributions import biject_to, constraints, transform_to

from ..data import batch
from ..data.batch import call
from ..errors import PyroVAEError
from .rng import forked_rng

PARTICLE_PLATE = "_particles"
DATA_PLATE = "data"

__all__ = [
    "PARTICLE_PLATE", "DATA_PLATE", "is_density_site", "is_subsample", "is_factor", "is_observed", "is_latent",
    "has_density", "is_point_mass", "elementwise_base", "particles", "trace_pair", "plate_dims", "Layout",
    "build_layout", "site_matrix", "per_point", "site_sum", "PointDensities", "point_densities", "latent_values",
    "latent_matrix", "stack_draws", "trace_draws", "repeat_points", "BROADCAST_FIX",
    "base_support", "is_enumerable", "summing", "enumerated_trace", "enum_site_sum", "marginal_densities",
]

# what a model must do to be traced with a leading draw dim (the one line of every such error)
BROADCAST_FIX = ("broadcast over leading batch dims: use x.shape[:-1] for sizes, `...` indexing (z[..., 0], not "
                 "z[:, 0]), reshape(*z.shape[:-1], d) (not view(-1, d)) and pyro.plate dims")


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
        gtr = batch.call(poutine.trace(guide).get_trace, x)
        mtr = batch.call(poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace, x)
    return gtr, mtr


T = TypeVar("T")


def stack_draws(trace: Callable[[Optional[int]], tuple], read: Callable[..., T], k: int, nest: int,
                broadcasts: bool = True) -> T:
    """``read(*traces, k)``: (k, b, ...) matrices of k draws, whether or not the program broadcasts over draws.

    A program that broadcasts is traced once, ``trace(None)`` inside the
    particle plate; one that does not (``Layout.broadcasts``) is traced k
    times without it, ``trace(j)`` for draw j, and each draw's matrices
    (``read`` with k=1) are stacked along dim 0.  ``read`` returns a tensor,
    or tuples and dataclasses of tensors, None (any draw's None is the
    result's) and bools (true if every draw's is).
    """
    if broadcasts:
        with particles(k, nest):
            traces = trace(None)
        return read(*traces, k)
    return _stack([read(*trace(j), 1) for j in range(k)])


def _stack(parts: list):
    first = parts[0]
    if any(p is None for p in parts):
        return None
    if torch.is_tensor(first):
        return torch.cat(parts, 0)
    if isinstance(first, bool):
        return all(parts)
    if isinstance(first, tuple):
        return tuple(_stack(list(p)) for p in zip(*parts))
    if dataclasses.is_dataclass(first):
        return type(first)(**{f.name: _stack([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)})
    raise TypeError(f"cannot stack draws of {type(first).__name__}")


def trace_draws(model, x, k: int, layout: "Layout", read: Callable[..., T], guide: Optional[Callable] = None) -> T:
    """``read(guide trace, model trace, k)`` for k draws z ~ q(z|x), vectorized or one at a time (see stack_draws)."""
    return stack_draws(lambda j: trace_pair(model, x, guide=guide), read, k, layout.nest, layout.broadcasts)


def repeat_points(x, k: int):
    """The rows of ``x`` repeated k times (row j*b + i is point i): k draws as k*b points of the data plate.

    For the model alone on a program that does not broadcast: the data plate
    makes its rows independent, so this is k draws per point in one plain
    trace; per-point (1, k*b) results reshape to (k, b).  Not for a guide,
    which may hold one parameter per point.
    """
    return batch.repeat_rows(x, k)


def plate_dims(model, traces) -> tuple:
    """(max plate nesting, dim of the "data" plate) read off traces of the model and the guide."""
    nest, data_dim = 0, None
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            for f in site["cond_indep_stack"]:
                if f.dim is not None:
                    nest = max(nest, -f.dim)
                if f.name == DATA_PLATE:
                    data_dim = f.dim
    if data_dim is None:
        raise PyroVAEError(
            f"{type(model).__name__}: no sample site is inside pyro.plate('data', ...): "
            "put the observations (and the local latents) in a plate named 'data'"
        )
    return nest, data_dim


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


# -- the layout -------------------------------------------------------------------------------------


@dataclass
class Layout:
    """The latent sites of a model and guide and how they line up per data point."""

    nest: int  # max plate nesting of model and guide (without the particle plate)
    data_dim: int  # dim of the "data" plate
    sites: List[str]  # latent sites of the guide, in the model's latent_sites order, then guide order
    sizes: List[int]  # numbers per data point, per site
    labels: List[str]  # one per latent number: "z[0]", "z[1]", ...
    shapes: Dict[str, tuple]  # site value shape for the traced points (no draw dim)
    supports: Dict[str, object]  # the prior's support, per site
    event_dims: Dict[str, int]  # the prior's event dims, per site
    point_mass: bool  # some latent site of the guide is a Delta (see is_point_mass)
    observed: List[str] = field(default_factory=list)  # observed sites of the model, in trace order
    # model and guide broadcast over a leading draw dim (see stack_draws); else draws are traced one at a time
    broadcasts: bool = True
    # discrete sites summed out exactly (see marginal_densities): the guide's, in guide order, then the model's own
    summed: List[str] = field(default_factory=list)
    summed_guide: List[str] = field(default_factory=list)  # those of them the guide samples

    @property
    def summed_model_only(self) -> List[str]:
        """Discrete sites only the model has (a mixture's component): replay draws them from their prior."""
        return [s for s in self.summed if s not in self.summed_guide]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    @property
    def latent_names(self) -> List[str]:
        """Labels as evaluation reports them: a site with one number per point keeps its bare name."""
        names = []
        for s, d in zip(self.sites, self.sizes):
            names += [s] if d == 1 else [f"{s}[{j}]" for j in range(d)]
        return names

    def split(self, m: np.ndarray) -> Dict[str, np.ndarray]:
        """(..., dim) -> one (..., size) block per site."""
        out, i = {}, 0
        for s, d in zip(self.sites, self.sizes):
            out[s] = m[..., i : i + d]
            i += d
        return out


def _first_line(e: BaseException) -> str:
    """The error's own words, without the trace-shape table Pyro appends."""
    return next((l.strip() for l in str(e).splitlines() if l.strip()), type(e).__name__)


# errors a trace raises when the program does not fit the data or its plates (not bugs of this library)
_TRACE_ERRORS = (ValueError, RuntimeError, TypeError, NotImplementedError, IndexError, AssertionError)
_SIGNATURE = re.compile(r"positional argument|unexpected keyword argument|"
                        r"required (keyword-only |positional )?argument")
_SHAPE = re.compile(r"shape mismatch|must be a \d-?d tensor|the size of tensor a|expanded size|"
                    r"is invalid for input of size|view size is not compatible|too many indices|must match the size|"
                    r"broadcast", re.IGNORECASE)


def _likely_cause(e: BaseException) -> str:
    """What to fix, for the failure actually seen on a first trace of model and guide."""
    msg = str(e)
    if isinstance(e, TypeError) and _SIGNATURE.search(msg):
        return ("model and guide are called with the data as their only argument: give them the signature "
                "model(self, x) and guide(self, x)")
    if "mat1 and mat2" in msg or "mat2 must be" in msg:
        return "check that the data have the columns the model's layers were built for"
    if "support" in msg and "Expected value argument" in msg:
        return "check that the data have the support the model's likelihood was built for"
    if _SHAPE.search(msg):
        return ("its tensors do not line up with pyro.plate('data'): give every site the batch shape of its plates "
                "(points,) and " + BROADCAST_FIX)
    return "check that the data have the columns and support the model was built for"


@torch.no_grad()
def build_layout(model, x, data: str = "the evaluation data") -> Layout:
    """Plates, latent and observed sites, sizes, supports and shapes, from one trace of guide and model on ``x``.

    Also whether model and guide broadcast over a leading draw dim (see
    :func:`stack_draws`), tried on two points.  ``data`` names ``x`` in the
    error raised when the model fails on it.
    """
    try:
        gtr, mtr = trace_pair(model, x)
    except PyroVAEError:
        raise
    except _TRACE_ERRORS as e:
        raise _fails(model, data, e) from None
    observed = [name for name, site in mtr.nodes.items() if is_observed(site)]
    if model.obs_site not in observed:
        raise PyroVAEError(
            f"{type(model).__name__}.obs_site is {model.obs_site!r} but the model has no such observed sample "
            "site: set obs_site to the name of the observed pyro.sample"
        )
    nest, data_dim = plate_dims(model, (gtr, mtr))
    # discrete sites with a finite support are summed, not sampled coordinates: the guide's, then the model's own
    summed_guide = [name for name, site in gtr.nodes.items() if is_enumerable(site)]
    summed = summed_guide + [name for name, site in mtr.nodes.items() if is_enumerable(site) and name not in gtr.nodes]
    sites = [name for name, site in gtr.nodes.items() if is_latent(site) and name not in summed_guide]
    for s in getattr(model, "latent_sites", ()):
        if s not in mtr.nodes or not is_latent(mtr.nodes[s]):
            raise PyroVAEError(f"latent site {s!r} is not a latent sample site of the model: check latent_sites")
        if s not in sites and s not in summed:
            # replay would draw it from the prior and log q would miss it: every weight would be wrong
            raise PyroVAEError(f"latent site {s!r} has no site in the guide: give the guide a pyro.sample({s!r}, q)")
    order = {n: i for i, n in enumerate(getattr(model, "latent_sites", ()))}
    sites.sort(key=lambda s: order.get(s, len(order)))  # stable: unlisted guide sites keep guide order
    b = batch.num_rows(x)
    layout = Layout(nest, data_dim, sites, [], [], {}, {}, {}, False, observed, summed=summed, summed_guide=summed_guide)
    for s in summed:
        _check_summed(s, gtr, mtr)
    for s in sites:
        gsite = gtr.nodes[s]
        if not any(f.name == DATA_PLATE for f in gsite["cond_indep_stack"]):
            raise PyroVAEError(
                f"latent site {s!r} is outside pyro.plate('data'): per-point evaluation needs local latents; "
                "make a global quantity a pyro.param, or move the site into the data plate"
            )
        if s not in mtr.nodes:
            raise PyroVAEError(
                f"guide site {s!r} has no matching sample site in the model: give the model a pyro.sample({s!r}, prior)"
            )
        node = mtr.nodes[s]
        event_dim = len(node["fn"].event_shape)
        size = site_matrix(node["value"].unsqueeze(0), event_dim, nest, data_dim, 1, b).shape[-1]
        layout.sizes.append(size)
        layout.labels.extend(f"{s}[{j}]" for j in range(size))
        layout.shapes[s] = tuple(node["value"].shape)
        layout.supports[s] = node["fn"].support
        layout.event_dims[s] = event_dim
        layout.point_mass = layout.point_mass or is_point_mass(gsite["fn"])
    try:  # the densities too: the data's support is checked where a density is taken
        point_densities(gtr, mtr, layout, 1, b)
    except _TRACE_ERRORS as e:
        raise _fails(model, data, e) from None
    if summed:
        try:
            marginal_densities(model, x, gtr, mtr, layout, 1, b)
        except _TRACE_ERRORS as e:
            raise PyroVAEError(
                f"{type(model).__name__} fails on {data} with its discrete site(s) {', '.join(map(repr, summed))} "
                f"summed out ({_first_line(e)[:300]}): their values come stacked in dims left of the plates, so "
                + BROADCAST_FIX) from None
    layout.broadcasts = _broadcasts(model, x, layout)
    return layout


def _check_summed(name: str, gtr, mtr) -> None:
    """A summed site is one value per data point: inside pyro.plate('data') and no other plate, in model and guide."""
    node = mtr.nodes.get(name)
    if node is None:
        raise PyroVAEError(f"guide site {name!r} has no matching sample site in the model: "
                           f"give the model a pyro.sample({name!r}, prior)")
    if not is_enumerable(node):
        raise PyroVAEError(f"discrete guide site {name!r} is not a finite discrete site of the model "
                           f"({type(node['fn']).__name__}): give it the guide's family (Categorical, Bernoulli, ...)")
    for tr in (gtr, mtr):
        if name not in tr.nodes:
            continue
        plates = [f.name for f in tr.nodes[name]["cond_indep_stack"] if f.vectorized]
        if DATA_PLATE not in plates:
            raise PyroVAEError(
                f"discrete site {name!r} is outside pyro.plate('data'): summing it out per data point needs one value "
                "per point; move it into the data plate (a global discrete choice cannot be evaluated per point)")
        if set(plates) != {DATA_PLATE}:
            raise PyroVAEError(
                f"discrete site {name!r} is inside plate(s) {', '.join(p for p in plates if p != DATA_PLATE)} nested "
                "in 'data': only one discrete value per data point can be summed out here; make it one site per "
                "point (OneHotCategorical over the combined values) or a continuous latent")


def _fails(model, data: str, e: BaseException) -> PyroVAEError:
    return PyroVAEError(f"{type(model).__name__} fails on {data} with one draw per point ({_first_line(e)[:300]}): "
                        f"{_likely_cause(e)}")


# a number of draws unlike the two points the probe traces, so that indexing draws as points (z[:, 0]) fails
PROBE_DRAWS = 3


def _broadcasts(model, x, layout: Layout) -> bool:
    """Whether model and guide broadcast over a leading draw dim, tried with a few draws on two points.

    The vectorized trace must run, and give draw by draw the densities that a
    plain trace gives at the same latent values: a model that indexes the draw
    dim as if it were the points can run and be silently wrong.  The probe
    draws on a forked RNG stream, so the caller's draws are those it would
    have had without it.
    """
    x, k = batch.rows(x, slice(0, 2)), PROBE_DRAWS
    b = batch.num_rows(x)
    with forked_rng(batch.tensors(x)[0].device):
        try:
            _, plain = trace_pair(model, x)
            gtr, mtr = trace_pair(model, x, k, layout.nest)
            dens = point_densities(gtr, mtr, layout, k, b)
            observed = [n for n, site in mtr.nodes.items() if is_observed(site)]
            latent = [n for n, site in mtr.nodes.items() if is_latent(site)]
            draws = [{n: mtr.nodes[n]["value"][j].reshape(plain.nodes[n]["value"].shape) for n in latent}
                     for j in range(k)]
        except (PyroVAEError, KeyError, *_TRACE_ERRORS):
            return False
        # float32 sums of batched and of plain matrix products agree to about half their digits
        tol = torch.finfo(dens.log_lik.dtype).eps ** 0.5

        def close(tr, names, ref):
            return torch.allclose(_named_sum(tr, names, layout, x), ref.double(), rtol=tol, atol=tol)

        for j, v in enumerate(draws):
            try:
                m1 = batch.call(poutine.trace(poutine.condition(model.model, data=v)).get_trace, x)
                if not (close(m1, observed, dens.log_lik[j]) and close(m1, latent, dens.log_prior[j])):
                    return False
            except (PyroVAEError, KeyError, *_TRACE_ERRORS):
                return False
            try:
                # the guide's discrete sites too: q(z | x, y) at the draw's y, not at a fresh one
                given = layout.sites + layout.summed_guide
                g1 = batch.call(poutine.trace(poutine.condition(model.guide, data={s: v[s] for s in given})).get_trace, x)
                log_q = _named_sum(g1, given, layout, x)
            except (PyroVAEError, KeyError, *_TRACE_ERRORS):
                continue  # q has no density at a given value (some flows): the model's terms decide
            if not torch.allclose(log_q, dens.log_q[j].double(), rtol=tol, atol=tol):
                return False
    return True


def _named_sum(tr, names, layout: Layout, x) -> torch.Tensor:
    """The per-point float64 log-density, (b,), of the named sites of a plain trace on ``x``."""
    b = batch.num_rows(x)
    total = torch.zeros(b, dtype=torch.float64, device=batch.tensors(x)[0].device)
    for n in names:
        site = tr.nodes[n]
        total = total + per_point(site["fn"].log_prob(site["value"]), layout.nest, layout.data_dim, 1, b)[0].double()
    return total


# -- per-point densities and values ----------------------------------------------------------------


def site_sum(tr, keep, layout: Layout, k: int, b: int, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
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


def point_densities(gtr, mtr, layout: Layout, k: int, b: int, dtype: Optional[torch.dtype] = None) -> PointDensities:
    """log p(x|z), log p(z), log q(z|x) per point from a trace pair, each site cast to ``dtype`` (see site_sum)."""
    parts = [site_sum(mtr, is_observed, layout, k, b, dtype), site_sum(mtr, is_latent, layout, k, b, dtype),
             site_sum(gtr, is_latent, layout, k, b, dtype)]
    ref = next(p for p in parts if p is not None)  # build_layout saw an observed site
    return PointDensities(*[torch.zeros_like(ref) if p is None else p for p in parts])


def latent_values(tr, layout: Layout, k: int, b: int, draw_dim: bool = True) -> Dict[str, torch.Tensor]:
    """The layout's latent values in a trace, (k, b, size) float64 per site.

    ``draw_dim=False`` for a trace taken without the particle plate.
    """
    out = {}
    for s in layout.sites:
        node = tr.nodes.get(s)
        if node is None:
            raise PyroVAEError(f"latent site {s!r} is not in the trace: check the model's latent_sites")
        v = node["value"] if draw_dim else node["value"].unsqueeze(0)
        out[s] = site_matrix(v, len(node["fn"].event_shape), layout.nest, layout.data_dim, k, b).double()
    return out


def latent_matrix(tr, layout: Layout, k: int, b: int, draw_dim: bool = True) -> torch.Tensor:
    """The latent values of a trace as one (k, b, layout.dim) float64 matrix, sites in layout order."""
    lat = latent_values(tr, layout, k, b, draw_dim)
    return torch.cat([lat[s] for s in layout.sites], -1)



@torch.no_grad()
def array_sites(model, data) -> Dict[str, str]:
    """{array name: sample site} for the named arrays the model observes, found by identity in one trace on one row.

    Pyro's M2 example observes site "x" with its argument ``xs``, so names
    alone cannot say which array a site scores.  Arrays that are only inputs
    to networks (a conditional VAE's label) map to nothing.
    """
    if not batch.is_named(data):
        return {}
    g = min(batch.groups(data), key=lambda g: len(g["absent"]))  # a row with every array present
    one = batch.without(batch.rows(data, g["rows"][:1]), g["absent"])
    try:
        with forked_rng(batch.reference(one).device), pyro.validation_enabled(False):
            tr = batch.call(poutine.trace(poutine.block(model.model, hide_types=["param"])).get_trace, one)
    except Exception:  # the model's own failure is reported where it is run in earnest
        return {k: k for k in data if k == model.obs_site}
    out = {}
    for site_name, site in tr.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        v = site["value"]
        for name, t in one.items():
            if v is t or (torch.is_tensor(v) and v.shape == t.shape and v.data_ptr() == t.data_ptr()):
                out[name] = site_name
    return out


def observed_name(model, data, sites: Optional[Dict[str, str]] = None) -> Optional[str]:
    """Which named array holds the observations of ``model.obs_site`` (None for one tensor).

    ``sites``: :func:`array_sites` of the data, when the caller has it already.
    """
    if not batch.is_named(data):
        return None
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
    if not batch.is_named(template):
        return trace.nodes[model.obs_site]["value"].detach()
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


def _in_particles(tr) -> bool:
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
        return call(poutine.trace(program).get_trace, x)


def enum_site_sum(tr, keep, layout: Layout, k: int, b: int, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
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


def marginal_densities(model, x, gtr, mtr, layout: Layout, k: int, b: int, dtype: Optional[torch.dtype] = None,
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
    plate = k if _in_particles(mtr) else None
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
