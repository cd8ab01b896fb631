"""PSIS diagnostics: the Pareto k-hat of importance weights, per point, and the thresholds it is read against."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

# Thresholds people read k-hat against (Vehtari et al. 2024, "Pareto smoothed importance sampling")
KHAT_GOOD = 0.5
KHAT_BAD = 0.7


def arviz():
    """Import ArviZ without its import-time FutureWarning about the 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az



def pareto_khat(log_w: np.ndarray) -> np.ndarray:
    """PSIS Pareto k-hat of each row of ``log_w`` (points x draws): one number per point."""
    az = arviz()
    log_w = np.asarray(log_w, dtype=np.float64)
    if hasattr(az, "psislw"):
        with warnings.catch_warnings():
            # psislw warns when k-hat > 0.7; that is a result here, reported per point
            warnings.simplefilter("ignore")
            _, k = az.psislw(log_w)
        return np.atleast_1d(np.asarray(k, dtype=np.float64))
    return np.array([_khat_pyro(row) for row in log_w])  # pragma: no cover - ArviZ without psislw



def _khat_pyro(log_w: np.ndarray) -> float:  # pragma: no cover - fallback for ArviZ 1.x
    """The same tail fit as PSIS (M = min(S/5, 3 sqrt(S)) largest weights), with Pyro's GPD fit."""
    from pyro.ops.stats import fit_generalized_pareto

    s = len(log_w)
    m = int(min(0.2 * s, 3 * math.sqrt(s)))
    w = np.sort(np.exp(log_w - log_w.max()))
    tail = torch.as_tensor(w[-m:] - w[-m - 1], dtype=torch.float64)
    k, _ = fit_generalized_pareto(tail)
    return float(k)

