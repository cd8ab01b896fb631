"""Per-feature log-likelihood: each feature's E_q[log p(x_d | z)] over the points, with its standard error.

Where a model's observed site factorises over the features (a count law, a Bernoulli, a Gaussian over a row:
Pyro's ``Independent`` over a per-feature law), the reconstruction term of the ELBO splits into one term per
feature; which features a model explains badly is read off them.  z ~ q(z | x) is drawn ``draws`` times per
point; the model is replayed on each draw, and its observed site's per-feature log densities are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import pyro.distributions as dist
from pyro import poutine

from ..data import batch
from ..errors import PyroVAEError
from ..infer.data_name import named_data
from ..infer.modules import eval_mode
from ..infer.rng import isolated_rng
from ..infer.sites import elementwise_base, site_mask
from ..models.params import model_params


@dataclass(frozen=True)
class FeatureLogLikelihood:
    """Per feature: the mean over points of E_q[log p(x_d | z)] (nats), its between-point s.e., and how many
    points and draws per point it came from."""

    mean: torch.Tensor
    se: torch.Tensor
    points: int
    draws: int


def _per_feature(fn, value: torch.Tensor) -> torch.Tensor:
    """(rows, features) log densities of the observed site's values; a sequence's (rows, T, D) summed over the
    steps it has (its padded steps are masked out of the site, and so count for nothing), as its ELBO sums them."""
    mask = site_mask(fn)
    base = elementwise_base(fn, through_masks=True)
    lp = base.log_prob(value)
    if lp.shape != value.shape:
        law = ("a multinomial likelihood scores a row's counts together (its number of trials is the row's total)"
               if isinstance(base, dist.Multinomial) else
               f"the observed site's distribution ({type(base).__name__}) scores a row's features together")
        raise PyroVAEError(f"{law}, not each feature apart: a per-feature log-likelihood needs a likelihood that "
                           "factorises over the features (poisson, negative_binomial, zip, zinb, normal, bernoulli, "
                           "...): drop --per-feature")
    if mask is None:
        return lp
    lp = torch.where(mask.to(lp.device), lp, torch.zeros_like(lp))
    return lp.reshape(lp.shape[0], -1, lp.shape[-1]).sum(1) if lp.dim() > 2 else lp


@torch.no_grad()
def feature_log_likelihood(model, data, draws: int = 10, seed: int = 0, chunk: int = 512) -> FeatureLogLikelihood:
    """Each feature's E_q[log p(x_d | z)] over the rows of ``data`` (a tensor or named arrays)."""
    data = named_data(model, data)
    n = batch.num_rows(data)
    total, total_sq = None, None
    with model_params(model), eval_mode(model), isolated_rng(seed, batch.reference(data).device):
        for start in range(0, n, chunk):
            rows = batch.rows(data, torch.arange(start, min(n, start + chunk)))
            acc = None
            for _ in range(draws):
                guide = poutine.trace(model.guide).get_trace(**rows)
                tr = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(**rows)
                site = tr.nodes[model.obs_site]
                lp = _per_feature(site["fn"], site["value"]).double()
                acc = lp if acc is None else acc + lp
            per_point = acc / draws
            s, s2 = per_point.sum(0), (per_point ** 2).sum(0)
            total, total_sq = (s, s2) if total is None else (total + s, total_sq + s2)
    mean = total / n
    var = (total_sq / n - mean ** 2).clamp(min=0) * n / max(n - 1, 1)
    return FeatureLogLikelihood(mean.cpu(), (var / n).sqrt().cpu(), n, draws)
