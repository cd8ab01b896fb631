"""Posterior-predictive checks of count data per feature: mean, variance and zero fraction, observed and replicated.

For each held-out row, z ~ q(z | x) and a replicate x' ~ p(x | z) are drawn
from the model's own program (the observed site's law at the guide's draw, in
eval mode, on an isolated random stream); each feature's mean, variance and
share of zeros over the rows are then compared with the data's.  An
over-dispersed feature sits above the Poisson line var = mean, and a
likelihood with too few zeros shows a predicted zero fraction below the
observed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from pyro import poutine

from ..data import batch
from ..errors import PyroVAEError
from ..infer.modules import eval_mode
from ..infer.rng import isolated_rng

#: rows per chunk of replicates (bounds the memory of one draw of the observed site)
CHUNK_ROWS = 512


@dataclass
class CountChecks:
    """Per feature: the observed and replicated mean, variance and zero fraction over the checked rows."""

    observed: str  # the observed site checked
    num_rows: int
    mean: List[float]
    variance: List[float]
    zero_fraction: List[float]
    predicted_mean: List[float]
    predicted_variance: List[float]
    predicted_zero_fraction: List[float]


class _Moments:
    """Running per-feature sums of x, x^2 and zeros over chunks of rows (float64)."""

    def __init__(self):
        self.n, self.s, self.s2, self.zeros = 0, 0.0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        self.n += x.shape[0]
        self.s = self.s + x.sum(0)
        self.s2 = self.s2 + (x * x).sum(0)
        self.zeros = self.zeros + (x == 0).double().sum(0)

    def result(self):
        mean = self.s / self.n
        var = (self.s2 / self.n - mean * mean).clamp_min(0.0) * self.n / max(self.n - 1, 1)
        return mean.tolist(), var.tolist(), (self.zeros / self.n).tolist()


@torch.no_grad()
def count_checks(model, data, observed: str, *, seed: int = 0,
                 max_rows: Optional[int] = None) -> CountChecks:
    """The per-feature checks of ``model`` on the named ``data`` (or its first ``max_rows`` rows) at its observed
    site ``observed``, one replicate per row."""
    n = batch.num_rows(data)
    if max_rows is not None:
        n = min(n, max_rows)
    seen, drawn = _Moments(), _Moments()
    with eval_mode(model), isolated_rng(seed, batch.reference(data).device):
        for start in range(0, n, CHUNK_ROWS):
            rows = batch.rows(data, torch.arange(start, min(n, start + CHUNK_ROWS)))
            guide = batch.call(poutine.trace(model.guide).get_trace, rows)
            traced = batch.call(poutine.trace(poutine.replay(model.model, trace=guide)).get_trace, rows)
            site = traced.nodes.get(observed)
            if site is None or site["type"] != "sample" or not site["is_observed"]:
                raise PyroVAEError(f"the model has no observed site {observed!r} to check")
            seen.add(site["value"])
            drawn.add(site["fn"].sample())
    m, v, z = seen.result()
    pm, pv, pz = drawn.result()
    return CountChecks(observed, n, m, v, z, pm, pv, pz)
