"""Our PSIS k-hat and importance-sampled log p(x), checked against ArviZ's loo_approximate_posterior on the same draws.

ArviZ 1.x's ``loo_approximate_posterior`` is PSIS-LOO for a variational
posterior: it Pareto-smooths the ratios exp(-log_lik + log_p - log_q). Given
each diagnosed point as an observation with log_lik = -log w (w = p(x, z) / q(z|x)
on that point's own draws) and log_p = log_q = 0, its ratios are exactly our
importance weights, so (see :func:`pyro_vae.arviz_compat.loo_approximate_posterior`)

- its ``pareto_k`` must equal our k-hat: the same PSIS fit of the same weights;
- minus its ``elpd_i`` is a PSIS-smoothed estimate of log p(x), the plain
  average of the same weights being ours.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import arviz_compat
from ..infer.psis import KHAT_BAD
from .results import LooCheck

# k-hat: ArviZ's LOO subtracts the largest log-ratio before the same fit ours makes, which
# rounds each log-weight by an ulp of its size (~1e-13 for |log w| ~ 1e3) and moves the fitted
# shape by as much again; 1e-9 leaves four orders of margin and still catches any change of
# weights, tail length or fit (the smallest of those moves k-hat by ~1e-3)
KHAT_TOLERANCE = 1e-9
# log p(x): smoothing replaces the M largest weights by the fitted tail's expected order statistics,
# so the two estimates differ by the tail sum's deviation from its expectation, a part of the
# estimator's own Monte Carlo error (its s.e.). Held to 4 s.e. on points where that s.e. can be
# trusted (k-hat <= KHAT_BAD): a false alarm has probability below 1e-4 per point
LOG_PX_Z = 4.0


def is_log_px(log_w: np.ndarray):
    """Importance-sampled log p(x) per point from ``log_w`` (draws x points), and its delta-method s.e.

    log mean(w), with s.e. sd(w) / (mean(w) sqrt(S)).
    """
    lw = np.asarray(log_w, dtype=np.float64)
    s = lw.shape[0]
    top = lw.max(0)
    w = np.exp(lw - top)
    mean = w.mean(0)
    return top + np.log(mean), w.std(0, ddof=1) / (mean * math.sqrt(s))


def loo_check(log_w: np.ndarray, khat: np.ndarray) -> Optional[LooCheck]:
    """Compare ``khat`` (ours, per point) and the IS log p(x) of ``log_w`` (draws x points) with ArviZ's; None without it."""
    out = arviz_compat.loo_approximate_posterior(np.asarray(log_w, dtype=np.float64).T)
    if out is None:
        return None
    k_arviz, elpd = out
    k_ours = np.asarray(khat, dtype=np.float64)
    log_px, se = is_log_px(log_w)
    psis = -elpd
    # ArviZ refuses a tail with too few distinct draws (NaN); ours must then say "no fit" (inf) as well
    fit = np.isfinite(k_arviz)
    k_diff = float(np.max(np.abs(k_arviz - k_ours)[fit], initial=0.0))
    if np.any(~fit & np.isfinite(k_ours)):
        k_diff = math.inf
    trusted = fit & (k_ours <= KHAT_BAD)
    diff, sd = np.abs(psis - log_px)[trusted], se[trusted]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0, 0.0, diff / sd)  # no spread in the weights: s.e. 0, and both estimates exact
    z_max = float(np.max(z)) if z.size else None
    return LooCheck(arviz=arviz_compat.version(), khat=k_arviz, khat_max_abs_diff=k_diff, log_px=log_px, log_px_se=se,
                    log_px_psis=psis, compared=int(trusted.sum()), log_px_max_z=z_max,
                    agree=bool(k_diff <= KHAT_TOLERANCE and (z_max is None or z_max <= LOG_PX_Z)))
