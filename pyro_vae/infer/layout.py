"""The trace layout: which latent sites of a model and guide are coordinates of z, and how they line up per data point.

One trace of guide and model on the data decides, once, what every reader of
per-point draws needs: the plates (and which holds the data), the latent
sites in order with their sizes, shapes and supports, the observed sites,
whether the guide is a point mass, which discrete sites are summed out
rather than sampled, and whether the program broadcasts over a leading draw
dim.  :func:`build_layout` is the one way to get a :class:`Layout`;
evaluation and diagnostics both call it.

k draws per point are one trace with the draws in an outer particle plate;
a program that does not broadcast over that leading dim (``view(-1, d)``,
``z[:, 0]``) is found once, by :func:`build_layout`, and traced one draw at
a time into the same (k, b, ...) matrices (:func:`stack_draws`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, TypeVar

import numpy as np
import torch
from pyro import poutine
from torch.distributions import biject_to

from ..data import batch
from ..errors import PyroVAEError
from .probe import BROADCAST_FIX, TRACE_ERRORS, first_line, program_error
from .rng import forked_rng
from .sites import (DATA_PLATE, FoldMasks, data_plate, enum_site_sum, enumerated_trace, has_density, node_mask, is_enumerable, is_latent, is_observed, is_point_mass, marginal_densities, particles,
                    per_point, plate_dims, point_densities, site_matrix, trace_pair)

__all__ = ["Layout", "build_layout", "masked_coordinates", "masked_values", "masked_read", "PROBE_DRAWS", "stack_draws", "trace_draws", "repeat_points", "latent_values",
           "latent_matrix"]


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
    plate: str = DATA_PLATE  # the data plate's name (sites.data_plate)

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

    def site_tensors(self, m: np.ndarray) -> Optional[Dict[str, torch.Tensor]]:
        """(points, dim) -> float32 per-site tensors of the site's own shape, when that shape is (points, size)."""
        out = {}
        for s, v in self.split(np.asarray(m)).items():
            if self.shapes[s] != tuple(v.shape):
                return None  # nested plates or odd shapes: fall back to Pyro's own initialisation
            out[s] = torch.as_tensor(v, dtype=torch.float32)
        return out


@torch.no_grad()
def build_layout(model, x, data: str = "the evaluation data", continuous: bool = False) -> Layout:
    """Plates, latent and observed sites, sizes, supports and shapes, from one trace of guide and model on ``x``.

    Also whether model and guide broadcast over a leading draw dim (see
    :func:`stack_draws`), tried on two points.  ``data`` names ``x`` in the
    error raised when the model fails on it.  ``continuous=True`` refuses a
    discrete latent that cannot be summed out (an unbounded support, Poisson
    say): diagnostics sample the coordinates of z in an unconstrained space,
    which such a site does not have.
    """
    try:
        gtr, mtr = trace_pair(model, x)
    except PyroVAEError:
        raise
    except TRACE_ERRORS as e:
        raise program_error(model, data, e) from None
    observed = [name for name, site in mtr.nodes.items() if is_observed(site)]
    if model.obs_site not in observed:
        raise PyroVAEError(
            f"{type(model).__name__}.obs_site is {model.obs_site!r} but the model has no such observed sample "
            "site: set obs_site to the name of the observed pyro.sample"
        )
    nest, data_dim = plate_dims(model, (gtr, mtr))
    sites, summed, summed_guide = _latent_sites(model, gtr, mtr)
    b = batch.num_rows(x)
    layout = Layout(nest, data_dim, sites, [], [], {}, {}, {}, False, observed, summed=summed, summed_guide=summed_guide,
                    plate=data_plate((gtr, mtr)))
    for s in summed:
        _check_summed(s, gtr, mtr, layout.plate)
    for s in sites:
        _add_site(layout, s, gtr, mtr, b)
    _check_densities(model, x, gtr, mtr, layout, data)
    layout.broadcasts = _broadcasts(model, x, layout)
    if continuous:
        for s in layout.sites:
            if layout.supports[s].is_discrete:
                raise PyroVAEError(f"latent site {s!r} is discrete with an unbounded support: diagnostics cover "
                                   "continuous latents and sum finite discrete ones (Categorical, Bernoulli, "
                                   "OneHotCategorical); give it a finite support or diagnose without it")
    return layout


def _latent_sites(model, gtr, mtr):
    """(the coordinates of z in layout order, the summed discrete sites, those of them the guide samples)."""
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
    return sites, summed, summed_guide


def _add_site(layout: Layout, s: str, gtr, mtr, b: int) -> None:
    """Latent site ``s`` of the guide, checked against the model, appended to the layout."""
    gsite = gtr.nodes[s]
    if not any(f.name == layout.plate for f in gsite["cond_indep_stack"]):
        raise PyroVAEError(
            f"latent site {s!r} is outside pyro.plate({layout.plate!r}): per-point evaluation needs local latents; "
            "make a global quantity a pyro.param, or move the site into the data plate"
        )
    if s not in mtr.nodes:
        raise PyroVAEError(
            f"guide site {s!r} has no matching sample site in the model: give the model a pyro.sample({s!r}, prior)"
        )
    node = mtr.nodes[s]
    event_dim = len(node["fn"].event_shape)
    size = site_matrix(node["value"].unsqueeze(0), event_dim, layout.nest, layout.data_dim, 1, b).shape[-1]
    layout.sizes.append(size)
    layout.labels.extend(f"{s}[{j}]" for j in range(size))
    layout.shapes[s] = tuple(node["value"].shape)
    layout.supports[s] = node["fn"].support
    layout.event_dims[s] = event_dim
    layout.point_mass = layout.point_mass or is_point_mass(gsite["fn"])


def _check_densities(model, x, gtr, mtr, layout: Layout, data: str) -> None:
    """The densities taken once, so that the data's support is checked where a density is taken."""
    b = batch.num_rows(x)
    try:
        point_densities(gtr, mtr, layout, 1, b)
    except TRACE_ERRORS as e:
        raise program_error(model, data, e) from None
    if layout.summed:
        try:
            marginal_densities(model, x, gtr, mtr, layout, 1, b)
        except TRACE_ERRORS as e:
            raise PyroVAEError(
                f"{type(model).__name__} fails on {data} with its discrete site(s) "
                f"{', '.join(map(repr, layout.summed))} summed out ({first_line(e)[:300]}): their values come "
                "stacked in dims left of the plates, so " + BROADCAST_FIX) from None


def _check_summed(name: str, gtr, mtr, plate: str = DATA_PLATE) -> None:
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
        if plate not in plates:
            raise PyroVAEError(
                f"discrete site {name!r} is outside pyro.plate('data'): summing it out per data point needs one value "
                "per point; move it into the data plate (a global discrete choice cannot be evaluated per point)")
        if set(plates) != {plate}:
            raise PyroVAEError(
                f"discrete site {name!r} is inside plate(s) {', '.join(p for p in plates if p != plate)} nested "
                "in 'data': only one discrete value per data point can be summed out here; make it one site per "
                "point (OneHotCategorical over the combined values) or a continuous latent")


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
        except (PyroVAEError, KeyError, *TRACE_ERRORS):
            return False
        # float32 sums of batched and of plain matrix products agree to about half their digits
        tol = torch.finfo(dens.log_lik.dtype).eps ** 0.5

        def close(tr, names, ref):
            return torch.allclose(_named_sum(tr, names, layout, x), ref.double(), rtol=tol, atol=tol)

        for j, v in enumerate(draws):
            try:
                m1 = poutine.trace(poutine.condition(model.model, data=v)).get_trace(**x)
                if not (close(m1, observed, dens.log_lik[j]) and close(m1, latent, dens.log_prior[j])):
                    return False
            except (PyroVAEError, KeyError, *TRACE_ERRORS):
                return False
            drawn = layout.sites + layout.summed_guide  # every site the guide draws: log q holds its discrete ones
            try:
                g1 = poutine.trace(poutine.condition(model.guide, data={s: v[s] for s in drawn})).get_trace(**x)
                log_q = _named_sum(g1, drawn, layout, x)
            except (PyroVAEError, KeyError, *TRACE_ERRORS):
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


# -- k draws per point, vectorized or one at a time ----------------------------------------------------


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


def trace_draws(model, x, k: int, layout: Layout, read: Callable[..., T], guide: Optional[Callable] = None) -> T:
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


# -- per-point values -----------------------------------------------------------------------------------


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
def masked_coordinates(model, x, layout: Layout) -> Optional[np.ndarray]:
    """(points, layout.dim) bool: True where the model masks a latent coordinate out (``.mask()`` or
    ``poutine.mask``: a padded step of a shorter sequence), so that no density of the model or guide reads it;
    None when none is masked.  Diagnostics leave such coordinates out: their posterior is no distribution."""
    b = batch.num_rows(x)
    found = _site_masks(model, x, layout)
    if found is None:
        return None
    blocks = [site_matrix((~found.pads[s]).unsqueeze(0).to(torch.float64), layout.event_dims[s], layout.nest,
                          layout.data_dim, 1, b)[0] for s in layout.sites]
    return (torch.cat(blocks, -1) < 0.5).cpu().numpy()


def masked_values(model, x, layout: Layout) -> Optional[Dict[str, torch.Tensor]]:
    """Per latent site, a bool tensor of its value's shape on ``x``: True where the model masks the coordinate out
    (see :func:`masked_coordinates`); None when none is masked."""
    found = _site_masks(model, x, layout)
    return None if found is None else found.pads


@torch.no_grad()
def masked_read(model, x, layout: Layout) -> bool:
    """Whether some density of the model still reads a coordinate it masks out (a masked step whose value feeds
    an unmasked site): log p(x, z) per point is compared with the masked coordinates moved, the rest kept."""
    found = _site_masks(model, x, layout)
    if found is None:
        return False
    moved = {}
    for s in layout.sites:
        to_real = biject_to(layout.supports[s])
        z = found.values[s]
        moved[s] = torch.where(found.pads[s], to_real(to_real.inv(z) + 0.75), z)
    logp = []
    for values in (found.values, moved):
        with forked_rng(batch.reference(x).device), FoldMasks():
            tr = enumerated_trace(model.model, x, values, layout.summed, layout.nest)
            logp.append(enum_site_sum(tr, has_density, layout, 1, batch.num_rows(x), dtype=torch.float64))
    a, b = logp
    return bool(((a - b).abs() > 1e-5 * (1 + a.abs())).any())


@dataclass
class _SiteMasks:
    values: Dict[str, torch.Tensor]  # the model trace's latent values
    pads: Dict[str, torch.Tensor]  # True where masked out, the value's shape


def _site_masks(model, x, layout: Layout) -> Optional[_SiteMasks]:
    """One model trace's latent values and, per site, where the model masks them out; None when nothing is."""
    with forked_rng(batch.reference(x).device):
        _, mtr = trace_pair(model, x)
    values, pads, any_masked = {}, {}, False
    for s in layout.sites:
        node = mtr.nodes[s]
        value = node["value"]
        keep = node_mask(node)  # .mask() on its distribution and poutine.mask around it
        if keep is None:
            keep = torch.ones(value.shape, dtype=torch.bool, device=value.device)
        values[s], pads[s] = value, ~keep
        any_masked = any_masked or not bool(keep.all())
    return _SiteMasks(values, pads) if any_masked else None
