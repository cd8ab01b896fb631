"""What a model generates (reconstructions, prior samples, latent traversals), decoded for the report's figures."""

from __future__ import annotations

import numpy as np
import torch
from pyro import poutine

from ..data import batch
from ..infer.rng import isolated_rng
from ..infer.layout import Layout
from ..infer.sites import cycle_rows, observed_name
from .draws import draw_prior
from .results import Generated

SHOW = 12  # diagnosed points reconstructed
SAMPLES = 64  # prior draws decoded
TRAVERSAL_DIMS = 6
TRAVERSAL_STEPS = np.linspace(-2.5, 2.5, 9)  # in prior standard deviations


@torch.no_grad()
def decode_mean(model, z: np.ndarray, x_like: torch.Tensor, layout: Layout) -> np.ndarray:
    """Mean of p(x|z) for rows of z: the model's ``decode`` when it has one, else its observed site's mean."""
    zt = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=batch.reference(x_like).device)
    # a graph has decode only when it is z -> x of one Gaussian or Laplace latent (its one_latent)
    one = getattr(model, "one_latent", True) is not None
    if hasattr(model, "decode") and one and len(layout.sites) == 1 and len(x_like) == 1:  # no input beside x
        return model.decode(zt).cpu().numpy()
    data, i = {}, 0
    for s, d in zip(layout.sites, layout.sizes):
        data[s] = zt[:, i : i + d].reshape(zt.shape[0], *layout.shapes[s][1:])
        i += d
    # row j decodes with the inputs of row j of x_like (cycled): each point's own label, say
    xl = cycle_rows(x_like, zt.shape[0])
    tr = poutine.trace(poutine.condition(model.model, data=data)).get_trace(**xl)
    return tr.nodes[model.obs_site]["fn"].mean.reshape(zt.shape[0], -1).cpu().numpy()


def generate(model, x: torch.Tensor, layout: Layout, q_mean: np.ndarray, prior_sd: np.ndarray,
             contraction: np.ndarray, seed: int) -> Generated:
    """Decoder means at q's mean, at prior draws, and along each informative latent dim from the first point."""
    n = min(SHOW, batch.num_rows(x))
    recon = decode_mean(model, q_mean[:n], x, layout)
    # the same seed for every run, so runs' samples differ only by their models
    with isolated_rng(seed + 3, batch.reference(x).device):
        zp = draw_prior(model, x, SAMPLES, layout)[:, 0].cpu().numpy()
    samples = decode_mean(model, zp, x, layout)
    dims = np.argsort(-np.nan_to_num(contraction, nan=-1.0), kind="stable")[: min(TRAVERSAL_DIMS, layout.dim)]
    zs = []
    for j in dims:
        for t in TRAVERSAL_STEPS:
            z = np.array(q_mean[0], dtype=np.float64)
            z[j] = t * prior_sd[j]
            zs.append(z)
    traversal = decode_mean(model, np.stack(zs), batch.rows(x, slice(0, 1)), layout)
    obs = batch.observed(x, observed_name(model, x))
    return Generated(data=obs[:n].cpu().numpy().reshape(n, -1), reconstructions=recon, samples=samples,
                     traversal=traversal, traversal_dims=dims.astype(np.int64), traversal_steps=TRAVERSAL_STEPS.copy())
