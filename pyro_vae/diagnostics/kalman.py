"""The Kalman filter and RTS smoother: a linear-Gaussian chain's exact log-likelihood per sequence, and its smoothed posterior means and sds.

The state space is z_1 ~ N(m1, P1), z_t = A z_{t-1} + b + N(0, Q),
x_t = C z_t + d + N(0, R).  Sequences are filtered side by side (vectorized
over the sequences, a loop over time) in float64; a sequence's steps beyond
its length are predicted but never updated, so they add nothing to its
log-likelihood and, having no data, leave the smoothed real steps unchanged.
This is the exact reference for a declared chain with a linear transition and
a Normal emission of a linear map (``SequenceModel.linear_gaussian``), and
for the ``synthetic_sequences`` source's truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ..errors import PyroVAEError

_KEYS = ("A", "b", "Q", "C", "d", "R", "m1", "P1")


@dataclass(frozen=True)
class LinearGaussian:
    """A linear-Gaussian state space's parameters (float64): A, Q (k x k); b, m1 (k); P1 (k x k); C (D x k); d (D);
    R (D x D)."""

    A: torch.Tensor
    b: torch.Tensor
    Q: torch.Tensor
    C: torch.Tensor
    d: torch.Tensor
    R: torch.Tensor
    m1: torch.Tensor
    P1: torch.Tensor

    @classmethod
    def from_dict(cls, values: Mapping[str, torch.Tensor]) -> "LinearGaussian":
        missing = [k for k in _KEYS if k not in values]
        if missing:
            raise PyroVAEError(f"a linear-Gaussian state space needs {', '.join(_KEYS)}; missing {', '.join(missing)}")
        return cls(**{k: torch.as_tensor(values[k]).detach().to("cpu", torch.float64) for k in _KEYS})

    @classmethod
    def from_model(cls, model) -> Optional["LinearGaussian"]:
        """The state space of a declared chain that is one (a linear transition, a Normal emission of a linear
        map), else None."""
        values = getattr(model, "linear_gaussian", lambda: None)()
        return None if values is None else cls.from_dict(values)


@dataclass
class KalmanResult:
    """Per sequence: the exact log p(x) (N,), and the smoothed posterior p(z_t | x_{1:L}): means and sds (N, T, k),
    covariances (N, T, k, k).  Steps beyond a sequence's length hold the prior's prediction."""

    log_likelihood: torch.Tensor
    means: torch.Tensor
    sds: torch.Tensor
    covariances: torch.Tensor


def _lengths(x: torch.Tensor, lengths) -> torch.Tensor:
    n, steps = x.shape[:2]
    if lengths is None:
        return torch.full((n,), steps, dtype=torch.long)
    return torch.as_tensor(lengths).long().cpu()


def _symmetric(m: torch.Tensor) -> torch.Tensor:
    return 0.5 * (m + m.transpose(-1, -2))


def kalman_smoother(params: LinearGaussian, x, lengths=None) -> KalmanResult:
    """The Kalman filter forward (the log-likelihood) and the Rauch-Tung-Striebel smoother back, for (N, T, D)
    sequences ``x`` of ``lengths`` real steps (None: all T)."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 3 or x.shape[2] != params.C.shape[0]:
        raise PyroVAEError(f"the Kalman filter takes (sequences, steps, {params.C.shape[0]}) observations, got shape "
                           f"{tuple(x.shape)}")
    n, steps, dim = x.shape
    lengths = _lengths(x, lengths)
    real = torch.arange(steps) < lengths.unsqueeze(-1)  # (N, T)
    A, C, Q, R = params.A, params.C, params.Q, params.R
    eye = torch.eye(A.shape[0], dtype=torch.float64)
    m_pred = params.m1.expand(n, -1).clone()
    p_pred = params.P1.expand(n, -1, -1).clone()
    preds, filts = [], []
    loglik = torch.zeros(n, dtype=torch.float64)
    for t in range(steps):
        resid = x[:, t] - (m_pred @ C.T + params.d)
        s = _symmetric(C @ p_pred @ C.T + R)
        chol = torch.linalg.cholesky(s)
        solved = torch.cholesky_solve(resid.unsqueeze(-1), chol).squeeze(-1)
        step_ll = -0.5 * ((resid * solved).sum(-1) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
                          + dim * math.log(2 * math.pi))
        gain = torch.cholesky_solve(C @ p_pred, chol).transpose(-1, -2)  # P C^T S^-1
        on = real[:, t]
        m_filt = torch.where(on.unsqueeze(-1), m_pred + (gain @ resid.unsqueeze(-1)).squeeze(-1), m_pred)
        p_upd = _symmetric((eye - gain @ C) @ p_pred @ (eye - gain @ C).transpose(-1, -2) + gain @ R @ gain.transpose(-1, -2))
        p_filt = torch.where(on[:, None, None], p_upd, p_pred)
        loglik = loglik + torch.where(on, step_ll, torch.zeros_like(step_ll))
        preds.append((m_pred, p_pred))
        filts.append((m_filt, p_filt))
        m_pred = m_filt @ A.T + params.b
        p_pred = _symmetric(A @ p_filt @ A.T + Q)
    means, covs = [filts[-1][0]], [filts[-1][1]]
    for t in range(steps - 2, -1, -1):
        m_f, p_f = filts[t]
        m_p, p_p = preds[t + 1]
        j = torch.linalg.solve(p_p, A @ p_f).transpose(-1, -2)  # P_f A^T P_pred^-1 (P_pred symmetric)
        m_s = m_f + (j @ (means[0] - m_p).unsqueeze(-1)).squeeze(-1)
        p_s = _symmetric(p_f + j @ (covs[0] - p_p) @ j.transpose(-1, -2))
        means.insert(0, m_s)
        covs.insert(0, p_s)
    means_t = torch.stack(means, dim=1)
    covs_t = torch.stack(covs, dim=1)
    return KalmanResult(loglik, means_t, torch.diagonal(covs_t, dim1=-2, dim2=-1).sqrt(), covs_t)


def kalman_log_likelihood(params: LinearGaussian, x, lengths=None) -> torch.Tensor:
    """The exact log p(x) of each (N, T, D) sequence (its first ``lengths`` steps)."""
    return kalman_smoother(params, x, lengths).log_likelihood
