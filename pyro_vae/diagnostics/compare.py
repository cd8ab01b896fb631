"""Comparing two sets of posterior draws: moments, Gaussian KL, per-dimension Wasserstein-2."""

from __future__ import annotations

import numpy as np

from typing import Optional, Sequence, Tuple

from .results import Comparison, NodeComparison


def moments(z: np.ndarray):
    """(draws, points, latent) -> means (points, latent), covariances (points, latent, latent)."""
    mean = z.mean(0)
    c = z - mean
    cov = np.einsum("kbi,kbj->bij", c, c) / max(1, z.shape[0] - 1)
    return mean, cov


def gaussian_kl(m0, c0, m1, c1) -> np.ndarray:
    """KL(N(m0, c0) || N(m1, c1)) per point; inf where c0 is singular (a point mass)."""
    out = np.empty(m0.shape[0])
    d = m0.shape[1]
    for i in range(m0.shape[0]):
        try:
            l1 = np.linalg.cholesky(c1[i])
        except np.linalg.LinAlgError:
            out[i] = np.nan
            continue
        sign, logdet0 = np.linalg.slogdet(c0[i])
        if sign <= 0 or not np.isfinite(logdet0) or np.min(np.linalg.eigvalsh(c0[i])) < 1e-12:
            out[i] = np.inf
            continue
        logdet1 = 2 * np.log(np.diag(l1)).sum()
        a = np.linalg.solve(l1, c0[i])
        tr = np.trace(np.linalg.solve(l1.T, a))
        dm = np.linalg.solve(l1, m1[i] - m0[i])
        out[i] = 0.5 * (tr + dm @ dm - d + logdet1 - logdet0)
    return out


def wasserstein_per_dim(zq: np.ndarray, zr: np.ndarray, n_quantiles: int = 200) -> np.ndarray:
    """1-D Wasserstein-2 distance per (point, latent dim), from matched quantiles of the draws."""
    u = (np.arange(n_quantiles) + 0.5) / n_quantiles
    qq = np.quantile(zq, u, axis=0)
    qr = np.quantile(zr, u, axis=0)
    return np.sqrt(((qq - qr) ** 2).mean(0))


def compare(zq: np.ndarray, ref_mean, ref_cov, ref_draws,
            sites: Optional[Sequence[Tuple[str, int]]] = None) -> Comparison:
    """Per point: how far q (draws) is from the reference (exact moments and draws).

    ``sites``: (name, size) of each latent site in column order; with two or more, each site's columns are
    also compared on their own (its marginal: the covariance's diagonal block).
    """
    whole = _compare(zq, ref_mean, ref_cov, ref_draws)
    if sites is None or len(sites) < 2:
        return whole
    start = 0
    for name, size in sites:
        cols = slice(start, start + size)
        start += size
        part = _compare(zq[..., cols], ref_mean[:, cols], ref_cov[:, cols, cols], ref_draws[..., cols])
        whole.nodes.append(NodeComparison(name, size, part.mean_abs_error, part.std_mean_error, part.sd_ratio,
                                          part.kl_gauss, part.w2))
    return whole


def _compare(zq: np.ndarray, ref_mean, ref_cov, ref_draws) -> Comparison:
    qm, qc = moments(zq)
    q_sd = np.sqrt(np.clip(np.diagonal(qc, axis1=1, axis2=2), 0, None))
    r_sd = np.sqrt(np.clip(np.diagonal(ref_cov, axis1=1, axis2=2), 1e-300, None))
    dm = np.abs(qm - ref_mean)
    with np.errstate(divide="ignore"):
        log_ratio = np.log(q_sd / r_sd)  # -inf for a point mass: the geometric mean is then 0
    return Comparison(mean_abs_error=dm.mean(1), std_mean_error=(dm / r_sd).mean(1),
                      sd_ratio=np.exp(log_ratio.mean(1)),  # geometric mean over latent dims of sd_q / sd_ref
                      kl_gauss=gaussian_kl(qm, qc, ref_mean, ref_cov), w2=wasserstein_per_dim(zq, ref_draws).mean(1))




def compare_kept(zq: np.ndarray, ref_mean, ref_cov, ref_draws, keep: np.ndarray) -> Comparison:
    """:func:`compare` per point on its ``keep`` columns only (points, latent: False where the model masks a
    coordinate out, a padded step), no per-site parts; the Gaussian KL over the kept block."""
    parts = []
    for i in range(zq.shape[1]):
        cols = np.flatnonzero(keep[i])
        parts.append(_compare(zq[:, i : i + 1][..., cols], ref_mean[i : i + 1][:, cols],
                              ref_cov[i : i + 1][:, cols][:, :, cols], ref_draws[:, i : i + 1][..., cols]))
    return Comparison(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("mean_abs_error", "std_mean_error", "sd_ratio", "kl_gauss", "w2")))
