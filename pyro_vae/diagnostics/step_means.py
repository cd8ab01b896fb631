"""E_q[z_t] of a chain's every step, with its Monte Carlo s.e. small enough to compare q with the Kalman smoother per coordinate.

A structured guide's marginal means have no closed form (its combiner is a
network of z_{t-1}), so they are averaged over draws, two ways at once
smaller in error than plain draws: each step's value is the mean of its own
law q(z_t | z_{t-1}, h_t) at the drawn z_{t-1} (Rao-Blackwellised: the last
draw's noise never enters), and draws come in antithetic pairs (noise eps and
-eps at every step), which cancel the part of the mean that is linear in the
noise.  The s.e. is the pairs' spread over the square root of their number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from ..models.graph.sequence import step_site


@dataclass(frozen=True)
class StepMeans:
    """E_q[z_t | x] of each sequence and step, (N, T, k), and its Monte Carlo s.e. (same shape), float64."""

    means: torch.Tensor
    se: torch.Tensor


class _Mirrored(Messenger):
    """The guide's ``sites`` set to their law's mean + sign * sd * eps, one eps per site shared by both signs."""

    def __init__(self, sites, eps, sign: float, generator: torch.Generator):
        super().__init__()
        self.sites, self.eps, self.sign, self.generator = sites, eps, sign, generator

    def _pyro_sample(self, msg):
        if msg["name"] not in self.sites:
            return
        fn = msg["fn"]
        mean = fn.mean
        if msg["name"] not in self.eps:
            self.eps[msg["name"]] = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype).to(mean.device)
        msg["value"] = mean + self.sign * fn.variance.sqrt() * self.eps[msg["name"]]
        msg["done"] = True


@torch.no_grad()
def guide_step_means(model, data, draws: int = 2000, seed: int = 0, chunk: int = 500) -> StepMeans:
    """E_q[z_t] of a :class:`~pyro_vae.models.graph.sequence.SequenceModel`'s chain for the sequences ``data``
    (named arrays, ``lengths`` included), from ``draws`` antithetic pairs run ``chunk`` pairs at a time."""
    n, steps = data[model.obs_site].shape[:2]
    sites = {step_site(model.chain, t): t for t in range(1, steps + 1)}
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        rows = {name: v.repeat((k,) + (1,) * (v.dim() - 1)) for name, v in data.items()}
        eps, means = {}, []
        for sign in (1.0, -1.0):
            with poutine.trace() as tr, _Mirrored(sites, eps, sign, generator):
                model.guide(**rows)
            means.append(torch.stack([tr.trace.nodes[s]["fn"].mean for s in sites], dim=-2).double())
        pairs.append((0.5 * (means[0] + means[1])).reshape(k, n, steps, -1))
    every = torch.cat(pairs)
    return StepMeans(every.mean(0).cpu(), (every.std(0) / every.shape[0] ** 0.5).cpu())
