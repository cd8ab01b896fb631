"""Draws from q(z|x) and from p(z) as per-point matrices, and the latent layout they follow."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Optional

import numpy as np
import torch
from pyro import poutine
from torch.distributions import constraints

from ..errors import PyroVAEError
from ..infer.sites import (Layout, base_support, build_layout, cycle_rows, latent_matrix, marginal_densities,
                           particles, site_matrix, trace_draws)
from .settings import BUDGET
from ..data import batch

# the orchestrator and the report import these names from here
_Layout = Layout
_site_matrix = site_matrix


def _is_real(support) -> bool:
    """Real-valued support (independent() and mixture wrappers removed): unconstrained = constrained."""
    return base_support(support) is constraints.real


def _chunk_size(model, x: torch.Tensor, k: int, budget: int = BUDGET) -> int:
    lik = getattr(model, "likelihood", None)
    width = max(int(getattr(lik, "out_features", 0) or 0), _data_width(x), 64)
    return max(1, budget // (width * max(k, 1)))


def _data_width(x) -> int:
    return max(int(t.shape[-1]) if t.dim() > 1 else 1 for t in batch.tensors(x))


def _layout(model, x) -> Layout:
    """The latent layout of ``model`` on the diagnosed points ``x``: continuous sites, the finite discrete ones summed."""
    layout = build_layout(model, x, data="the diagnosed points")
    for s in layout.sites:
        if layout.supports[s].is_discrete:
            # a discrete site with no finite support cannot be summed, and has no unconstrained space to sample in
            raise PyroVAEError(f"latent site {s!r} is discrete with an unbounded support: diagnostics cover "
                               "continuous latents and sum finite discrete ones (Categorical, Bernoulli, "
                               "OneHotCategorical); give it a finite support or diagnose without it")
    return layout


# ---------------------------------------------------------------------------
# the pieces


@torch.no_grad()
def draw_q(model, x: torch.Tensor, num_draws: int, layout: _Layout, split: str = "points"):
    """z ~ q(z|x): (draws, points, latent) values and (draws, points) log p(x, z), log q(z|x).

    z is the continuous latents; the layout's discrete sites are summed out
    of both densities (see marginal_densities), so log p - log q is the
    importance weight of z and its mean the ELBO of q(z|x) against p(x, z).

    Work is chunked over points (``split="points"``) or, for guides whose
    parameters are per point and so need every point at once, over draws.
    """
    b = batch.num_rows(x)
    zs, lps, lqs = [], [], []
    step = _chunk_size(model, x, num_draws)
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
def draw_prior(model, x: torch.Tensor, num_draws: int, layout: _Layout) -> torch.Tensor:
    """z ~ p(z) as the model samples it (no guide), given the first point's inputs: (draws, 1, latent)."""
    prior = poutine.block(model.model, hide_types=["param"])
    if not layout.broadcasts:
        # every draw is of the same point: the draws are that point repeated in the data plate
        xs = cycle_rows(batch.rows(x, slice(0, 1)), num_draws)
        return latent_matrix(batch.call(poutine.trace(prior).get_trace, xs), layout, 1, num_draws)[0].unsqueeze(1)
    with particles(num_draws, layout.nest):
        tr = batch.call(poutine.trace(prior).get_trace, batch.rows(x, slice(0, 1)))
    return latent_matrix(tr, layout, num_draws, 1)


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
    width = max(int(getattr(lik, "out_features", 0) or 0), _data_width(x))
    for m in (model.modules() if isinstance(model, torch.nn.Module) else []):
        if isinstance(m, torch.nn.Linear):
            width = max(width, m.in_features, m.out_features)
    small = batch.reference(x).device.type == "cpu" and batch.num_rows(x) * copies * width <= 2**17
    old = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(old)


