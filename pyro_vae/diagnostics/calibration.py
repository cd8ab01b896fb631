"""Simulation-based calibration of q(z|x): ranks of prior draws among q's draws."""

from __future__ import annotations


import numpy as np
import torch
from pyro import poutine

from ..data import batch
from ..infer.layout import Layout, latent_matrix, stack_draws
from ..infer.sites import cycle_rows, simulated
from .sizing import chunk_size

@torch.no_grad()
def sbc_ranks(model, x, layout: Layout, sims: int, draws: int) -> np.ndarray:
    """Ranks of z* ~ p(z) among ``draws`` draws from q(z | x ~ p(x | z*)): (sims, latent), ints in 0..draws.

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
    return torch.cat(ranks, 0).cpu().numpy().astype(np.int64)


def sbc_uniformity(ranks: np.ndarray, draws: int, bins: int = 10) -> np.ndarray:
    """Chi-square p-value per latent dimension that the ranks (0..draws) are uniform."""
    from scipy.stats import chi2

    levels = draws + 1
    bins = min(bins, levels)
    binned = np.minimum((ranks * bins) // levels, bins - 1)
    counts = np.stack([np.bincount(binned[:, j], minlength=bins) for j in range(ranks.shape[1])], 1)
    # unequal bin widths when bins does not divide levels: expected counts follow the widths
    widths = np.bincount(np.minimum((np.arange(levels) * bins) // levels, bins - 1), minlength=bins)
    expected = ranks.shape[0] * widths[:, None] / levels
    stat = ((counts - expected) ** 2 / expected).sum(0)
    return chi2.sf(stat, bins - 1)
