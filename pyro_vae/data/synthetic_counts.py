"""Synthetic counts from a known model: NB or zero-inflated NB rows of a low-dimensional latent, with their truth.

``data.source = "synthetic_counts"`` draws, for each row, a latent z ~ N(0, I_k), a library size l (log-normal
around ``data.synthetic_library``), proportions rho = softmax(W z + b) over the ``data.synthetic_dim`` features
and counts x_d ~ NB(mean l rho_d, inverse dispersion theta_d), each set to zero with probability pi_d (the
dropout, mean ``data.synthetic_dropout``; 0: no zero inflation).  W, b, theta and pi are a fixed function of
``data.split_seed``: :func:`synthetic_counts_truth` gives them back, so that what a model learns (its theta,
its dropout) can be checked against them.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

#: the spread of the log library sizes around log(data.synthetic_library)
LIBRARY_SD = 0.3
#: the inverse dispersions are log-uniform over this range
THETA_RANGE = (1.0, 20.0)


def synthetic_counts_truth(cfg) -> Dict[str, torch.Tensor]:
    """The generating parameters (W, b, theta, dropout, library_loc, library_scale) of ``cfg``'s counts."""
    g = torch.Generator().manual_seed(cfg.split_seed + 54321)
    k, d = cfg.synthetic_latent_dim, cfg.synthetic_dim
    lo, hi = math.log(THETA_RANGE[0]), math.log(THETA_RANGE[1])
    # each feature's dropout is uniform around the mean asked for, at most 0.9
    dropout = (torch.rand(d, generator=g) * 2 * cfg.synthetic_dropout).clamp(max=0.9)
    return {
        "W": torch.randn(d, k, generator=g),
        "b": 0.5 * torch.randn(d, generator=g),
        "theta": torch.exp(lo + (hi - lo) * torch.rand(d, generator=g)),
        "dropout": dropout,
        "library_loc": torch.tensor(math.log(cfg.synthetic_library)),
        "library_scale": torch.tensor(LIBRARY_SD),
    }


def synthetic_counts(cfg):
    """(x, truth): ``cfg.num_points`` rows of counts (float32) and the parameters they were drawn with."""
    truth = synthetic_counts_truth(cfg)
    n, d = cfg.num_points, cfg.synthetic_dim
    # torch's Gamma draws from the global stream only: a forked one, seeded, leaves the caller's untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.split_seed)
        z = torch.randn(n, cfg.synthetic_latent_dim)
        log_library = truth["library_loc"] + truth["library_scale"] * torch.randn(n, 1)
        mu = torch.softmax(z @ truth["W"].T + truth["b"], dim=-1) * log_library.exp()
        theta = truth["theta"].expand(n, d)
        # NB(mu, theta) as a Gamma-Poisson mixture: rate ~ Gamma(theta, theta / mu), x ~ Poisson(rate)
        x = torch.poisson(torch.distributions.Gamma(theta, theta / mu).sample())
        x[torch.rand(n, d) < truth["dropout"]] = 0.0
    return x.float(), truth
