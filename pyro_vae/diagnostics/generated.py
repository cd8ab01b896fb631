"""What a model generates (reconstructions, prior samples, latent traversals), decoded for the report's figures."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from pyro import poutine

from ..data import batch
from ..data.names import top_names
from ..infer.rng import isolated_rng
from ..infer.layout import Layout
from ..infer.sites import cycle_rows, observed_name
from .draws import draw_prior
from .results import Generated

SHOW = 12  # diagnosed points reconstructed
SAMPLES = 64  # prior draws decoded
TRAVERSAL_DIMS = 6
TRAVERSAL_STEPS = np.linspace(-2.5, 2.5, 9)  # in prior standard deviations
SAMPLE_WORDS = 8  # a sampled document's words the report shows


@torch.no_grad()
def decode_mean(model, z: np.ndarray, x_like: torch.Tensor, layout: Layout) -> np.ndarray:
    """Mean of p(x|z) for rows of z: the model's ``decode`` when it has one, else its observed site's mean."""
    zt = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=batch.reference(x_like).device)
    # a graph has decode only when it is z -> x of one Gaussian or Laplace latent (its one_latent); a likelihood
    # that reads its rows (a library size, a multinomial's total) is traced on them instead, row j on row j's
    one = getattr(model, "one_latent", True) is not None
    reads_rows = getattr(getattr(model, "likelihood", None), "needs_rows", False)
    if hasattr(model, "decode") and one and len(layout.sites) == 1 and len(x_like) == 1 and not reads_rows:
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
             contraction: np.ndarray, seed: int, words: Optional[Sequence[str]] = None) -> Generated:
    """Decoder means at q's mean, at prior draws, and along each informative latent dim from the first point;
    with ``words`` (the columns' names, where they are a vocabulary), each sample's most frequent words."""
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
                     traversal=traversal, traversal_dims=dims.astype(np.int64), traversal_steps=TRAVERSAL_STEPS.copy(),
                     sample_library=observed_library(model, obs, SAMPLES), sample_words=sample_words(samples, words))


def sample_words(samples: np.ndarray, words: Optional[Sequence[str]]) -> np.ndarray:
    """(samples, SAMPLE_WORDS or fewer words) strings: each decoded sample's most frequent words, most first (""
    past a short one's); empty without a vocabulary."""
    if words is None:
        return np.asarray([], dtype=str)
    k = min(SAMPLE_WORDS, len(words))
    found = top_names(samples, words, k)
    return np.asarray([[w for w, _ in row] + [""] * (k - len(row)) for row in found], dtype=str)


def observed_library(model, obs: torch.Tensor, n: int) -> np.ndarray:
    """The library size each of ``n`` decoded rows was scaled by, for a count likelihood whose library is the
    row's observed total: the totals of ``obs``'s rows in turn (as :func:`decode_mean` cycles them), at least 1 as
    the likelihood takes them; empty for any other model."""
    if getattr(getattr(model, "likelihood", None), "library", None) != "observed":
        return np.zeros(0)
    totals = obs.reshape(obs.shape[0], -1).sum(-1).clamp(min=1.0)
    return totals[torch.arange(n, device=totals.device) % totals.shape[0]].cpu().numpy().astype(np.float64)
