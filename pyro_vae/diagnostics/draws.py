"""Draws from q(z|x) and from p(z) as per-point matrices, and the latent layout they follow."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from torch.distributions import constraints

from ..errors import PyroVAEError
from ..evaluation.estimators import PARTICLE_PLATE, is_density_site, plate_dims
from .settings import BUDGET

def _site_matrix(value: torch.Tensor, event_dim: int, nest: int, data_dim: int, k: int, b: int,
                 leading_draw: bool = False) -> torch.Tensor:
    """A site's values (or log-densities, ``event_dim=0``) -> (k, b, flattened latent dims).

    Batch dims are right-aligned to the plates (the draw plate at -(nest+1)),
    so missing leading dims are broadcast dims of size 1; with
    ``leading_draw=True`` dim 0 is a draw dim stacked in front of a site's
    value (MCMC samples) and missing plate dims go after it.  The data plate
    sits at ``data_dim``; every other plate and event dim is flattened into
    the latent vector.
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


def _per_point(lp, nest: int, data_dim: int, k: int, b: int) -> torch.Tensor:
    """Sum a site's log-density over every dim but draws and data points -> (k, b)."""
    return _site_matrix(lp, 0, nest, data_dim, k, b).sum(-1)


def _plate_layout(model, x) -> tuple:
    """(max plate nesting, dim of the "data" plate) from one trace of the model and the guide."""
    with torch.no_grad():
        gtr = poutine.trace(model.guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(x)
    nest, data_dim = plate_dims(model, (gtr, mtr))
    return nest, data_dim, gtr, mtr


def _is_real(support) -> bool:
    """Real-valued support (independent() wrappers removed): unconstrained = constrained."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _event_dim(fn) -> int:
    return len(getattr(fn, "event_shape", ()))


def _chunk_size(model, x: torch.Tensor, k: int, budget: int = BUDGET) -> int:
    lik = getattr(model, "likelihood", None)
    width = max(int(getattr(lik, "out_features", 0) or 0), x.shape[-1], 64)
    return max(1, budget // (width * max(k, 1)))


def _traced(model, x, k: int, nest: int, guide=None):
    """Guide and replayed-model traces with ``k`` draws vectorized in an outer plate."""
    guide = guide or model.guide
    with pyro.plate(PARTICLE_PLATE, k, dim=-(nest + 1)):
        gtr = poutine.trace(guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(x)
    return gtr, mtr


def _is_density(site) -> bool:
    """A sample site with a density; ``pyro.factor`` penalties (regularizers) are not densities of x or z."""
    return is_density_site(site) and not isinstance(site["fn"], dist.Unit)


def _log_terms(gtr, mtr, nest, data_dim, k, b):
    """Per point: log p(x, z) (every model site) and log q(z|x) (every guide site), each (k, b)."""
    log_p = log_q = torch.zeros(k, b, dtype=torch.float64)
    for tr, sign in ((mtr, "p"), (gtr, "q")):
        for site in tr.nodes.values():
            if not _is_density(site):
                continue
            lp = _per_point(site["fn"].log_prob(site["value"]), nest, data_dim, k, b).double()
            if sign == "p":
                log_p = log_p + lp
            else:
                log_q = log_q + lp
    return log_p, log_q


def _latents(tr, sites, nest, data_dim, k, b, draw_dim: bool = True) -> Dict[str, torch.Tensor]:
    """Latent values of a trace as (k, b, d) per site; ``draw_dim=False`` for a trace without the draw plate."""
    out = {}
    for s in sites:
        node = tr.nodes.get(s)
        if node is None:
            raise PyroVAEError(f"latent site {s!r} is not in the trace: check the model's latent_sites")
        v = node["value"] if draw_dim else node["value"].unsqueeze(0)
        out[s] = _site_matrix(v, _event_dim(node["fn"]), nest, data_dim, k, b).double()
    return out


def _is_point_mass(gtr) -> bool:
    """True when every density site of the guide is a Delta: q has no density to importance-sample with."""
    found = False
    for site in gtr.nodes.values():
        if not _is_density(site):
            continue
        fn = site["fn"]
        while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
            fn = fn.base_dist
        if not isinstance(fn, dist.Delta):
            return False
        found = True
    return found


@dataclass
class _Layout:
    nest: int
    data_dim: int
    sites: List[str]
    sizes: List[int]
    labels: List[str]
    shapes: Dict[str, tuple]  # site value shape for the diagnosed points (no draw dim)
    supports: Dict[str, object]
    event_dims: Dict[str, int]
    point_mass: bool

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def split(self, m: np.ndarray) -> Dict[str, np.ndarray]:
        out, i = {}, 0
        for s, d in zip(self.sites, self.sizes):
            out[s] = m[..., i : i + d]
            i += d
        return out


def _layout(model, x) -> _Layout:
    """Plates, latent sites and their sizes, supports and shapes, from one trace on ``x``."""
    try:
        nest, data_dim, gtr, mtr = _plate_layout(model, x)
    except PyroVAEError:
        raise
    except (ValueError, RuntimeError, TypeError, NotImplementedError, IndexError) as e:
        msg = " ".join(l.strip() for l in str(e).splitlines() if l.strip()) or type(e).__name__
        raise PyroVAEError(f"{type(model).__name__} fails on the diagnosed points ({msg[:300]}): check that the "
                           "data have the columns and support the model was built for") from None
    if model.obs_site not in mtr.nodes:
        raise PyroVAEError(f"{type(model).__name__}.obs_site is {model.obs_site!r} but the model has no such "
                           "sample site: set obs_site to the name of the observed pyro.sample")
    b = x.shape[0]
    sites = list(model.latent_sites)
    sizes, labels, shapes, supports, event_dims = [], [], {}, {}, {}
    for s in sites:
        if s not in mtr.nodes:
            raise PyroVAEError(f"latent site {s!r} is not a sample site of the model: check latent_sites")
        node = mtr.nodes[s]
        m = _site_matrix(node["value"].unsqueeze(0), _event_dim(node["fn"]), nest, data_dim, 1, b)
        d = m.shape[-1]
        sizes.append(d)
        labels += [f"{s}[{j}]" for j in range(d)]
        shapes[s] = tuple(node["value"].shape)
        supports[s] = node["fn"].support
        event_dims[s] = _event_dim(node["fn"])
    return _Layout(nest, data_dim, sites, sizes, labels, shapes, supports, event_dims, _is_point_mass(gtr))


# ---------------------------------------------------------------------------
# the pieces


@torch.no_grad()
def draw_q(model, x: torch.Tensor, num_draws: int, layout: _Layout, split: str = "points"):
    """z ~ q(z|x): (draws, points, latent) values and (draws, points) log p(x, z), log q(z|x).

    Work is chunked over points (``split="points"``) or, for guides whose
    parameters are per point and so need every point at once, over draws.
    """
    b = x.shape[0]
    zs, lps, lqs = [], [], []
    step = _chunk_size(model, x, num_draws)
    if split == "points":
        chunks = [(x[i : i + step], num_draws) for i in range(0, b, step)]
        axis = 1
    else:
        per = max(1, step * num_draws // max(b, 1))
        chunks = [(x, min(per, num_draws - i)) for i in range(0, num_draws, per)]
        axis = 0
    for xb, k in chunks:
        bb = xb.shape[0]
        gtr, mtr = _traced(model, xb, k, layout.nest)
        lat = _latents(gtr, layout.sites, layout.nest, layout.data_dim, k, bb)
        zs.append(torch.cat([lat[s] for s in layout.sites], -1))
        lp, lq = _log_terms(gtr, mtr, layout.nest, layout.data_dim, k, bb)
        lps.append(lp)
        lqs.append(lq)
    return torch.cat(zs, axis), torch.cat(lps, axis), torch.cat(lqs, axis)


@torch.no_grad()
def draw_prior(model, x: torch.Tensor, num_draws: int, layout: _Layout) -> torch.Tensor:
    """z ~ p(z) as the model samples it (no guide): (draws, points, latent)."""
    xb = x[:1]
    with pyro.plate(PARTICLE_PLATE, num_draws, dim=-(layout.nest + 1)):
        tr = poutine.trace(poutine.block(model.model, hide_types=["param"])).get_trace(xb)
    lat = _latents(tr, layout.sites, layout.nest, layout.data_dim, num_draws, 1)
    return torch.cat([lat[s] for s in layout.sites], -1)


def _site_tensors(layout: _Layout, m: np.ndarray) -> Optional[Dict[str, torch.Tensor]]:
    """(points, latent) -> per-site tensors of the site's own shape, when that shape is (points, d)."""
    out = {}
    for s, v in layout.split(np.asarray(m)).items():
        if layout.shapes[s] != tuple(v.shape):
            return None  # nested plates or odd shapes: fall back to Pyro's own initialisation
        out[s] = torch.as_tensor(v, dtype=torch.float32)
    return out


@contextmanager
def _few_threads(model, x: torch.Tensor, copies: int = 1):
    """One intra-op thread while NUTS or Adam runs many tiny sequential steps on the CPU.

    Each step is a handful of small matrix products (points x widest layer);
    splitting those across threads only adds hand-offs, and on a machine whose
    cores are shared the hand-offs dominate (measured: 7x slower gradients with
    2 threads than with 1 on a busy 2-core box).  Large problems keep every
    thread; the caller's setting is restored either way.
    """
    lik = getattr(model, "likelihood", None)
    width = max(int(getattr(lik, "out_features", 0) or 0), x.shape[-1])
    for m in (model.modules() if isinstance(model, torch.nn.Module) else []):
        if isinstance(m, torch.nn.Linear):
            width = max(width, m.in_features, m.out_features)
    small = x.device.type == "cpu" and x.shape[0] * copies * width <= 2**17
    old = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(old)


def _bar(total: int, progress: bool, desc: str):
    if not progress or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


