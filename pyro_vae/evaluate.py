"""Honest evaluation of any model that follows the protocol.

All numbers are per data point, in nats, computed from the model's and the
guide's Pyro sample sites (unscaled: no minibatch factor, no beta):

- ``elbo = reconstruction - kl`` with reconstruction E_q[log p(x|z)] and
  KL(q(z|x) || p(z)) — analytic when Pyro/torch has it for the pair, else
  Monte Carlo;
- ``log_likelihood``: log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), per
  point, vectorized over K and chunked so memory stays bounded;
  ``log_likelihood_se`` is its Monte Carlo standard error (delta method over
  the K weights of each point), not the spread across points.

Evaluation runs under ``torch.no_grad`` inside ``torch.random.fork_rng``: it
never changes parameters, optimizer state or the training RNG stream.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, Optional

import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .errors import PyroVAEError

PARTICLE_PLATE = "_particles"
DEFAULT_IW_SAMPLES = 1000
# elements of the largest per-chunk tensor (particles x points x decoder width)
DEFAULT_BUDGET = 2**24


@contextmanager
def isolated_rng(seed: int, device: torch.device):
    """Run with a fixed seed and restore every RNG stream afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def model_device(model) -> torch.device:
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    buffers = list(model.buffers()) if isinstance(model, torch.nn.Module) else []
    for t in params + buffers:
        return t.device
    return torch.device("cpu")


def _plate_layout(model, x) -> tuple:
    """(max plate nesting, dim of the "data" plate) from one trace of the model and guide."""
    with torch.no_grad():
        gtr = poutine.trace(model.guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(x)
    nest, data_dim = 0, None
    for tr in (gtr, mtr):
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            for f in site["cond_indep_stack"]:
                if f.dim is not None:
                    nest = max(nest, -f.dim)
                if f.name == "data":
                    data_dim = f.dim
    if data_dim is None:
        raise PyroVAEError(
            f"{type(model).__name__}: no sample site is inside pyro.plate('data', ...): "
            "put the observations (and the local latents) in a plate named 'data'"
        )
    return nest, data_dim


def is_density_site(site) -> bool:
    """A sample site with a density (plates record their subsample as a sample site too)."""
    return site["type"] == "sample" and not site_is_subsample(site)


def _per_point(lp: torch.Tensor, nest: int, data_dim: int, k: int, b: int) -> torch.Tensor:
    """Sum a site's log-density over every dim but particles and data points -> (k, b)."""
    lp = torch.as_tensor(lp)
    while lp.dim() < nest + 1:
        lp = lp.unsqueeze(0)
    p = lp.dim()
    lp = lp.movedim((p - nest - 1, p + data_dim), (0, 1))
    lp = lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)
    return lp.expand(k, b)


def _traces(model, x, k: int, nest: int):
    with pyro.plate(PARTICLE_PLATE, k, dim=-(nest + 1)):
        gtr = poutine.trace(model.guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(x)
    return gtr, mtr


def _site_terms(model, x, k: int, nest: int, data_dim: int) -> Dict[str, torch.Tensor]:
    """Per-point (k, b) terms: log p(x|z), log p(z), log q(z|x), and the analytic KL if it exists."""
    b = x.shape[0]
    gtr, mtr = _traces(model, x, k, nest)
    obs = model.obs_site
    log_lik = log_prior = log_q = 0.0
    kl = 0.0
    analytic = True
    point_mass = False
    for name, site in mtr.nodes.items():
        if not is_density_site(site):
            continue
        lp = _per_point(site["fn"].log_prob(site["value"]), nest, data_dim, k, b)
        if name == obs or site["is_observed"]:
            log_lik = log_lik + lp
        else:
            log_prior = log_prior + lp
    for name, site in gtr.nodes.items():
        if not is_density_site(site):
            continue
        q = site["fn"]
        log_q = log_q + _per_point(q.log_prob(site["value"]), nest, data_dim, k, b)
        point_mass = point_mass or isinstance(_base(q), dist.Delta)
        if analytic and name in mtr.nodes:
            try:
                kl = kl + _per_point(kl_divergence(q, mtr.nodes[name]["fn"]), nest, data_dim, k, b)
            except NotImplementedError:
                analytic = False
    return {
        "log_lik": torch.as_tensor(log_lik).expand(k, b),
        "log_prior": torch.as_tensor(log_prior).expand(k, b),
        "log_q": torch.as_tensor(log_q).expand(k, b),
        "kl": torch.as_tensor(kl).expand(k, b) if analytic else None,
        "point_mass": point_mass,
    }


def _base(d):
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return d


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _width(model, x) -> int:
    lik = getattr(model, "likelihood", None)
    return max(int(getattr(lik, "out_features", 0)), x.shape[-1], 1)


@torch.no_grad()
def evaluate(
    model,
    x: torch.Tensor,
    iw_samples: Optional[int] = DEFAULT_IW_SAMPLES,
    elbo_samples: int = 1,
    seed: int = 0,
    budget: int = DEFAULT_BUDGET,
) -> Dict[str, object]:
    """Per-point ELBO (split), importance-sampled log p(x) with its SE, and ESS.

    Returns a dict of plain floats/ints (JSON-ready).  ``log_likelihood`` is
    ``None`` for a point-mass (delta) guide, where importance sampling has no
    proposal density, and when ``iw_samples`` is ``None`` (ELBO only).
    """
    if (iw_samples is not None and iw_samples < 1) or elbo_samples < 1:
        raise PyroVAEError(f"iw_samples and elbo_samples must be >= 1 (got {iw_samples}, {elbo_samples})")
    device = model_device(model)
    x = torch.as_tensor(x, dtype=torch.float32).to(device)
    if x.dim() != 2 or x.shape[0] == 0:
        raise PyroVAEError(f"evaluation data must be a non-empty matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    width = _width(model, x)
    with isolated_rng(seed, device):
        nest, data_dim = _plate_layout(model, x[:2])
        rec_sum = kl_sum = 0.0
        ll, se2, ess = [], [], []
        analytic, point_mass = True, False
        b_elbo = max(1, budget // (width * elbo_samples))
        for sl in _chunks(n, b_elbo):
            t = _site_terms(model, x[sl], elbo_samples, nest, data_dim)
            rec_sum += float(t["log_lik"].mean(0).sum())
            point_mass = point_mass or t["point_mass"]
            if t["kl"] is not None:
                kl_sum += float(t["kl"].mean(0).sum())
            else:
                analytic = False
                kl_sum += float((t["log_q"] - t["log_prior"]).mean(0).sum())
        if iw_samples and not point_mass:
            k_chunk = max(1, min(iw_samples, budget // width))
            b_chunk = max(1, budget // (width * k_chunk))
            for sl in _chunks(n, b_chunk):
                parts = []
                for ks in _chunks(iw_samples, k_chunk):
                    t = _site_terms(model, x[sl], ks.stop - ks.start, nest, data_dim)
                    parts.append(t["log_lik"] + t["log_prior"] - t["log_q"])
                log_w = torch.cat(parts, 0).double()  # (K, b)
                est, s2, e = importance_summary(log_w)
                ll.append(est)
                se2.append(s2)
                ess.append(e)
    out = {
        "elbo": (rec_sum - kl_sum) / n,
        "reconstruction": rec_sum / n,
        "kl": kl_sum / n,
        "kl_analytic": analytic,
        "log_likelihood": None,
        "log_likelihood_se": None,
        "iw_samples": int(iw_samples or 0),
        "iw_ess_mean": None,
        "num_points": int(n),
    }
    if ll:
        ll_t, se2_t, ess_t = torch.cat(ll), torch.cat(se2), torch.cat(ess)
        out["log_likelihood"] = float(ll_t.mean())
        out["log_likelihood_se"] = float(se2_t.sum().sqrt() / n)
        out["iw_ess_mean"] = float(ess_t.mean())
    return out


def importance_summary(log_w: torch.Tensor):
    """Per point, from (K, b) log-weights: log mean w, the delta-method variance of it, and the ESS."""
    k = log_w.shape[0]
    lse = torch.logsumexp(log_w, 0)
    est = lse - math.log(k)
    w = torch.exp(log_w - lse)  # normalized weights, sum to 1 per point
    # Var[log mean w] ~= Var[w] / (K mean(w)^2) = (K sum w_norm^2 - 1) / K
    var = ((k * (w**2).sum(0) - 1.0) / k).clamp_min(0.0) if k > 1 else torch.zeros_like(est)
    ess = 1.0 / (w**2).sum(0)
    return est, var, ess


@torch.no_grad()
def test_elbo(model, x: torch.Tensor, seed: int = 0, budget: int = DEFAULT_BUDGET) -> float:
    """The per-point test ELBO alone (one sample per point), for training curves."""
    return evaluate(model, x, iw_samples=None, elbo_samples=1, seed=seed, budget=budget)["elbo"]
