"""PSIS diagnostics: the Pareto k-hat of importance weights, per point, and the thresholds it is read against."""

from __future__ import annotations

import numpy as np

from ..arviz_compat import psis_tail_draws, psislw

# Thresholds people read k-hat against (Vehtari et al. 2024, "Pareto smoothed importance sampling")
KHAT_GOOD = 0.5
KHAT_BAD = 0.7


def pareto_khat(log_w: np.ndarray) -> np.ndarray:
    """PSIS Pareto k-hat of each row of ``log_w`` (points x draws): one number per point."""
    _, k = psislw(log_w)
    return k


def tail_draws(num_draws: int) -> int:
    """M, how many of the largest of ``num_draws`` weights the k-hat fit reads (above the (M+1)-th largest)."""
    return psis_tail_draws(num_draws)
