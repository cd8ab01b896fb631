"""Reference posteriors: NUTS over the latents of each point, and an exact grid for 2-D latents."""

from __future__ import annotations

import time
from typing import Dict

import numpy as np
import torch
from torch.distributions import biject_to
from torch.distributions.transforms import AffineTransform, ComposeTransform

from ..infer.layout import Layout, masked_coordinates, masked_values, repeat_points
from ..infer.sites import enum_site_sum, enumerated_trace, has_density, site_matrix, summing
from .settings import DiagnoseSettings
from .sizing import chunk_size
from ..data import batch

def unconstrained_loc_scale(guide, layout: Layout, b: int):
    """AutoNormal's per-site (loc, scale) in unconstrained space, shaped like the site."""
    out = {}
    for s in layout.sites:
        loc, scale = guide._get_loc_and_scale(s)
        out[s] = (loc.detach(), scale.detach())
    return out


def nuts_reference(model, x, layout: Layout, precond: Dict[str, tuple], settings: DiagnoseSettings,
                   progress: bool = False, log=None):
    """Posterior draws for every point with NUTS, the decoder fixed.

    Chains run vectorized: the points are repeated ``nuts_chains`` times in one
    NUTS run over the joint (independent) posterior, each copy starting from
    its own place, so on 2 cores C chains cost little more than one.  Each copy
    is a chain in the ArviZ sense (R-hat compares them); the copies share the
    step size and mass matrix adaptation.  The sampler works in coordinates
    whitened by the per-point Gaussian fit (``precond``: loc and scale in
    unconstrained space), which makes the posterior of every point roughly
    standard normal, so one step size suits all points and trees stay shallow.
    The chains run over the continuous sites; the layout's discrete sites are
    marked for enumeration, which Pyro's NUTS sums out of the potential
    itself (given ``max_plate_nesting``), so they sample p(z | x) with them
    marginalized.
    """
    from pyro.infer import MCMC, NUTS

    c, b = settings.nuts_chains, batch.num_rows(x)
    x_rep = batch.repeat_rows(x, c)
    transforms, init = {}, {}
    for s in layout.sites:
        loc, scale = precond[s]
        ddim = layout.data_dim - layout.event_dims[s]  # the data plate's dim in the site's value
        loc_r = torch.cat([loc] * c, dim=ddim)
        scale_r = torch.cat([scale] * c, dim=ddim)
        to_real = biject_to(layout.supports[s]).inv
        transforms[s] = ComposeTransform([to_real, AffineTransform(loc_r, scale_r).inv])
        # Stan's default start: uniform(-2, 2) in the (here whitened) unconstrained space
        init[s] = torch.rand_like(loc_r) * 4 - 2
    program = summing(model.model, layout.summed)
    pads = masked_values(model, x_rep, layout)
    if pads is None:
        kernel = NUTS(program, transforms=transforms, max_tree_depth=settings.max_tree_depth,
                      max_plate_nesting=layout.nest, target_accept_prob=0.8)
    else:
        kernel = NUTS(potential_fn=_held_potential(program, x_rep, transforms, init, pads, layout.nest),
                      max_tree_depth=settings.max_tree_depth, target_accept_prob=0.8)
    mc = MCMC(kernel, num_samples=settings.nuts_samples, warmup_steps=settings.nuts_warmup, num_chains=1,
              initial_params=init, disable_progbar=not progress, transforms=None if pads is None else transforms)
    t0 = time.perf_counter()
    mc.run(**x_rep)
    seconds = time.perf_counter() - t0
    samples = mc.get_samples()
    n = settings.nuts_samples
    per_site = []
    for s in layout.sites:
        v = samples[s].detach()
        m = site_matrix(v, layout.event_dims[s], layout.nest, layout.data_dim, n, c * b, leading_draw=True)
        per_site.append(m.reshape(n, c, b, -1).permute(1, 0, 2, 3))  # copy j of point i is row j*b + i
    z = torch.cat(per_site, -1).double()  # (chains, draws, points, latent)
    if pads is not None:
        # a held coordinate is no draw of any posterior: absent (NaN), never a number
        held = masked_coordinates(model, x, layout)
        z[:, :, torch.as_tensor(held)] = float("nan")
    try:
        div = mc.diagnostics()["divergences"]["chain 0"]
    except (KeyError, TypeError):
        div = []
    diverging = np.zeros((c, n), dtype=bool)
    diverging[:, [int(i) for i in div]] = True  # one joint trajectory: a divergence touches every copy
    return z, diverging, seconds, float(kernel.step_size)


def _held_potential(program, x, transforms, init, pads, nest: int):
    """NUTS's potential with the masked-out coordinates (padded steps) held at q's mean.

    No density reads those coordinates (``masked_read`` is checked before),
    so any value is exact for the rest: the program sees them at whitened 0
    (q's mean), and NUTS's own copies of them get a standard normal of their
    own, independent of everything, so the sampler stays proper (a flat
    direction would never make a U-turn) and the rest's draws are those of
    p(z_real | x).  Those copies are dropped after sampling.
    """
    from pyro.infer.mcmc.util import initialize_model

    _, full, _, _ = initialize_model(program, model_kwargs=x, transforms=transforms, max_plate_nesting=nest,
                                     initial_params=init)

    def potential(u):
        held = {s: torch.where(pads[s], torch.zeros_like(v), v) if s in pads else v for s, v in u.items()}
        own = sum(0.5 * (torch.where(pads[s], u[s], torch.zeros_like(u[s])) ** 2).sum() for s in pads if s in u)
        return full(held) + own

    return potential


@torch.no_grad()
def grid_reference(model, x, layout: Layout, center: np.ndarray, halfwidth: np.ndarray, prior_box: np.ndarray,
                   settings: DiagnoseSettings, num_draws: int = 4000):
    """The exact posterior of a 2-D latent on a grid: log p(x, z) normalized over cells.

    Two passes per point: a coarse grid over the union of the prior's range and
    +-8 sd of the local Gaussian fit finds where the mass is; a fine grid over
    that region gives the moments (midpoint rule) and draws (a cell by its
    probability, then uniform within it).
    """
    site = layout.sites[0]
    b = batch.num_rows(x)
    lo = np.minimum(center - 8 * halfwidth, prior_box[0])
    hi = np.maximum(center + 8 * halfwidth, prior_box[1])
    coarse = _grid_logp(model, x, layout, site, lo, hi, 96)
    p = np.exp(coarse - coarse.max(axis=(1, 2), keepdims=True))
    p /= p.sum(axis=(1, 2), keepdims=True)
    h = (hi - lo) / 96
    lo2, hi2 = np.empty_like(lo), np.empty_like(hi)
    for i in range(b):
        keep = p[i] > 1e-9
        for a in range(2):
            idx = np.nonzero(keep.any(axis=1 - a))[0]
            lo2[i, a] = lo[i, a] + (idx.min() - 1) * h[i, a]
            hi2[i, a] = lo[i, a] + (idx.max() + 2) * h[i, a]
    g = settings.grid_size
    logp = _grid_logp(model, x, layout, site, lo2, hi2, g)
    logp = logp - _logsumexp(logp.reshape(b, -1), axis=1)[:, None, None]
    prob = np.exp(logp)
    h2 = (hi2 - lo2) / g
    axes = [lo2[:, a, None] + (np.arange(g)[None, :] + 0.5) * h2[:, a, None] for a in range(2)]  # (b, g)
    m0 = (prob.sum(2) * axes[0]).sum(1)
    m1 = (prob.sum(1) * axes[1]).sum(1)
    d0 = axes[0] - m0[:, None]
    d1 = axes[1] - m1[:, None]
    # midpoint rule: the sum over cell centres is already the integral of (z - m)^2 p(z), to
    # far below h^2 for a smooth density inside the box (adding the h^2/12 of a uniform spread
    # within each cell would count the cells' width twice); only the draws below are jittered
    v0 = (prob.sum(2) * d0**2).sum(1)
    v1 = (prob.sum(1) * d1**2).sum(1)
    c01 = np.einsum("bij,bi,bj->b", prob, d0, d1)
    mean = np.stack([m0, m1], 1)
    cov = np.stack([np.stack([v0, c01], 1), np.stack([c01, v1], 1)], 1)
    # mass in the outermost cells: the fine grid should hold (nearly) all of it
    edge = np.maximum.reduce([prob[:, 0, :].sum(1), prob[:, -1, :].sum(1), prob[:, :, 0].sum(1), prob[:, :, -1].sum(1)])
    gen = torch.Generator().manual_seed(settings.seed + 7)
    draws = np.empty((num_draws, b, 2))
    for i in range(b):
        cells = torch.multinomial(torch.as_tensor(prob[i].reshape(-1)), num_draws, replacement=True, generator=gen).numpy()
        jitter = torch.rand(num_draws, 2, generator=gen, dtype=torch.float64).numpy()
        draws[:, i, 0] = lo2[i, 0] + (cells // g + jitter[:, 0]) * h2[i, 0]
        draws[:, i, 1] = lo2[i, 1] + (cells % g + jitter[:, 1]) * h2[i, 1]
    grid = {"log_prob": logp.astype(np.float32), "lo": lo2, "hi": hi2}
    return mean, cov, draws, grid, float(edge.max())


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _grid_logp(model, x, layout: Layout, site: str, lo: np.ndarray, hi: np.ndarray, g: int) -> np.ndarray:
    """log p(x_i, z) on a g x g grid over [lo_i, hi_i] per point: (points, g, g), discrete sites summed out."""
    b = batch.num_rows(x)
    device = batch.reference(x).device
    h = (hi - lo) / g
    ii, jj = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    cells = np.stack([ii.reshape(-1), jj.reshape(-1)], 1) + 0.5  # (g*g, 2)
    z_all = lo[None, :, :] + cells[:, None, :] * h[None, :, :]  # (g*g, b, 2)
    out = np.empty((g * g, b))
    step = chunk_size(model, x, b) if b else 1
    nest, data_dim = layout.nest, layout.data_dim
    for k0 in range(0, g * g, max(1, step)):
        zc = torch.as_tensor(z_all[k0 : k0 + step], dtype=torch.float32, device=device)
        k = zc.shape[0]
        if layout.broadcasts:
            shape = [1] * (nest + 1)
            shape[0] = k
            shape[nest + 1 + data_dim] = b
            tr = enumerated_trace(model.model, x, {site: zc.reshape(*shape, 2)}, layout.summed, nest, k)
            lp = enum_site_sum(tr, has_density, layout, k, b, dtype=torch.float64)
        else:
            # the k cells of every point as k*b points of one plain trace (see repeat_points)
            shape = list(layout.shapes[site])
            shape[len(shape) - layout.event_dims[site] + data_dim] = k * b
            tr = enumerated_trace(model.model, repeat_points(x, k), {site: zc.reshape(shape)}, layout.summed, nest)
            lp = enum_site_sum(tr, has_density, layout, 1, k * b, dtype=torch.float64).reshape(k, b)
        out[k0 : k0 + k] = lp.cpu().numpy()
    return out.T.reshape(b, g, g)


