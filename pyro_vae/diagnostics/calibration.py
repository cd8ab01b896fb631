"""Simulation-based calibration of q(z|x): ranks of prior draws among q's draws."""

from __future__ import annotations


import numpy as np
import torch
from pyro import poutine

from ..data import batch
from ..infer.layout import Layout, latent_matrix, masked_coordinates, stack_draws
from ..errors import PyroVAEError
from ..infer.rng import forked_rng
from ..infer.sites import array_sites, cycle_rows, is_observed, observed_name, simulated
from .sizing import chunk_size

LEFT_OUT = -1  # the rank of a coordinate the model masks out

@torch.no_grad()
def check_simulable(model, x, name: str) -> None:
    """Refuse SBC for a program whose observed sites are not each one data array the simulation can write back
    (a sequence observed step by step, ``obs_x_1``, ``obs_x_2``, ...: the simulated steps would not be the
    sequence the guide reads)."""
    sites = dict(array_sites(model, x))
    sites.setdefault(observed_name(model, x, sites), model.obs_site)
    with forked_rng(batch.reference(x).device):
        tr = poutine.trace(model.model).get_trace(**x)
    left = [n for n, site in tr.nodes.items() if site["type"] == "sample" and is_observed(site)
            and n not in sites.values()]
    if left:
        more = ", ".join(left[:3]) + (" ..." if len(left) > 3 else "")
        raise PyroVAEError(f"run {name!r}: simulation-based calibration needs each observed site to be one data "
                           f"array it can simulate, but the model also observes {len(left)} more site(s) ({more}) "
                           "that no array maps to one to one (a sequence observed step by step): pass --sbc-sims 0")


@torch.no_grad()
def sbc_ranks(model, x, layout: Layout, sims: int, draws: int) -> np.ndarray:
    """Ranks of z* ~ p(z) among ``draws`` draws from q(z | x ~ p(x | z*)): (sims, latent), ints in 0..draws,
    and LEFT_OUT where the simulation's model masks the coordinate out (a padded step: no density reads it, so
    its rank says nothing of q).

    The data are simulated by the model itself (``poutine.uncondition`` turns
    the observed site into a sampled one), so this works for any model whose
    prior and likelihood can be sampled.
    """
    # simulation i keeps the conditioning inputs of point i mod b (one array: only the shape matters)
    template = cycle_rows(x, sims)
    tr = poutine.trace(poutine.uncondition(model.model)).get_trace(**template)
    x_sim = simulated(model, template, tr)
    z_true = latent_matrix(tr, layout, 1, sims, draw_dim=False)[0]  # (sims, latent)
    ranks = []
    step = chunk_size(model, x, draws)
    for i in range(0, sims, step):
        xb = batch.rows(x_sim, slice(i, i + step))
        bb = batch.num_rows(xb)
        zq = stack_draws(lambda j: (poutine.trace(model.guide).get_trace(**xb),),
                         lambda gtr, k: latent_matrix(gtr, layout, k, bb), draws, layout.nest, layout.broadcasts)
        ranks.append((zq < z_true[i : i + bb].double()).sum(0))
    out = torch.cat(ranks, 0).cpu().numpy().astype(np.int64)
    masked = masked_coordinates(model, template, layout)
    if masked is not None:
        out[masked] = LEFT_OUT
    return out


def sbc_uniformity(ranks: np.ndarray, draws: int, bins: int = 10) -> np.ndarray:
    """Chi-square p-value per latent dimension that the ranks (0..draws) are uniform, over the simulations where
    the dimension is not LEFT_OUT; NaN (untested) for a dimension left out of every simulation."""
    from scipy.stats import chi2

    levels = draws + 1
    bins = min(bins, levels)
    binned = np.minimum((ranks * bins) // levels, bins - 1)
    kept = ranks != LEFT_OUT
    counts = np.stack([np.bincount(binned[kept[:, j], j], minlength=bins) for j in range(ranks.shape[1])], 1)
    # unequal bin widths when bins does not divide levels: expected counts follow the widths
    widths = np.bincount(np.minimum((np.arange(levels) * bins) // levels, bins - 1), minlength=bins)
    expected = kept.sum(0)[None, :] * widths[:, None] / levels
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = ((counts - expected) ** 2 / expected).sum(0)
    return np.where(kept.any(0), chi2.sf(stat, bins - 1), np.nan)
