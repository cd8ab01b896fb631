"""Draws from q(z|x) and from p(z) as per-point matrices, in the order of the model's layout."""

from __future__ import annotations

import torch
from pyro import poutine

from ..data import batch
from ..infer.layout import Layout, latent_matrix, trace_draws
from ..infer.sites import cycle_rows, marginal_densities, particles
from .sizing import chunk_size

__all__ = ["draw_q", "draw_prior"]


@torch.no_grad()
def draw_q(model, x: torch.Tensor, num_draws: int, layout: Layout, split: str = "points"):
    """z ~ q(z|x): (draws, points, latent) values and (draws, points) log p(x, z), log q(z|x).

    z is the continuous latents; the layout's discrete sites are summed out
    of both densities (see marginal_densities), so log p - log q is the
    importance weight of z and its mean the ELBO of q(z|x) against p(x, z).

    Work is chunked over points (``split="points"``) or, for guides whose
    parameters are per point and so need every point at once, over draws.
    """
    b = batch.num_rows(x)
    zs, lps, lqs = [], [], []
    step = chunk_size(model, x, num_draws)
    if split == "points":
        chunks = [(batch.rows(x, slice(i, i + step)), num_draws) for i in range(0, b, step)]
        axis = 1
    else:
        per = max(1, step * num_draws // max(b, 1))
        chunks = [(x, min(per, num_draws - i)) for i in range(0, num_draws, per)]
        axis = 0
    for xb, k in chunks:
        bb = batch.num_rows(xb)

        def read(gtr, mtr, k):
            dens = marginal_densities(model, xb, gtr, mtr, layout, k, bb, dtype=torch.float64)
            return latent_matrix(gtr, layout, k, bb), dens.log_joint, dens.log_q

        z, lp, lq = trace_draws(model, xb, k, layout, read)
        zs.append(z)
        lps.append(lp)
        lqs.append(lq)
    return torch.cat(zs, axis), torch.cat(lps, axis), torch.cat(lqs, axis)


@torch.no_grad()
def draw_prior(model, x: torch.Tensor, num_draws: int, layout: Layout) -> torch.Tensor:
    """z ~ p(z) as the model samples it (no guide), given the first point's inputs: (draws, 1, latent)."""
    prior = poutine.block(model.model, hide_types=["param"])
    if not layout.broadcasts:
        # every draw is of the same point: the draws are that point repeated in the data plate
        xs = cycle_rows(batch.rows(x, slice(0, 1)), num_draws)
        return latent_matrix(poutine.trace(prior).get_trace(**xs), layout, 1, num_draws)[0].unsqueeze(1)
    with particles(num_draws, layout.nest):
        tr = poutine.trace(prior).get_trace(**batch.rows(x, slice(0, 1)))
    return latent_matrix(tr, layout, num_draws, 1)
