"""Observation models p(x | z): decoder output -> a Pyro distribution over one data row.

Each likelihood is a small ``nn.Module`` registered by name.  It says how many
numbers the decoder must produce per data row, turns them into a distribution
with event dimension 1, gives that distribution's mean (for ``decode``), and
checks that data lies in the support *before* training, so a mismatch is one
clear error instead of a Pyro validation traceback minutes into a run.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist

from ..errors import PyroVAEError
from ..registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")

# A floor on predicted/learned scales: a Gaussian whose scale collapses to 0 on
# a constant pixel sends log p(x|z) to +inf and the ELBO to NaN.
MIN_SCALE = 1e-3


def _describe(x: torch.Tensor, bad: torch.Tensor) -> str:
    n = int(bad.sum())
    idx = bad.nonzero()[0].tolist()
    example = float(x[tuple(idx)])
    where = f"row {idx[0]}" + (f", column {idx[1]}" if len(idx) > 1 else "")
    return f"{n} of {bad.numel()} values (first at {where}: {example:g})"


class Likelihood(nn.Module):
    """Base class; subclasses set :attr:`name` and implement the three methods below."""

    name = "?"
    #: values the encoder sees are ``encoder_input(x)``; identity except for categorical
    discrete = False

    def __init__(self, data_dim: int, scale: Union[float, str] = "learned", levels: Optional[int] = None):
        super().__init__()
        self.data_dim = data_dim

    @property
    def out_features(self) -> int:
        return self.data_dim

    def forward(self, out: torch.Tensor) -> dist.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def law(self, out: torch.Tensor, x: Optional[torch.Tensor] = None,
            data: Optional[Dict[str, torch.Tensor]] = None) -> dist.Distribution:
        """p(x | out) scoring (or drawing) rows ``x`` of the named ``data``: a count law reads a row's total or
        its library size there (models/counts.py); the others need the decoder's output only."""
        return self(out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self(out).mean

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def check_support(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`PyroVAEError` if ``x`` is outside this likelihood's support."""


class _LocScale(Likelihood):
    """Shared scale handling for location-scale likelihoods (normal, laplace)."""

    family = None  # a pyro.distributions class taking (loc, scale)

    def __init__(self, data_dim, scale="learned", levels=None):
        super().__init__(data_dim)
        self.scale_mode = scale
        if scale == "learned":
            # softplus(raw) = 1 at initialisation
            self.raw_scale = nn.Parameter(torch.full((data_dim,), math.log(math.e - 1)))
        elif scale == "learned_isotropic":
            self.raw_scale = nn.Parameter(torch.tensor(math.log(math.e - 1)))
        elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))
        elif scale != "amortized":
            raise PyroVAEError(
                f"model.scale: expected a positive number, 'learned', 'learned_isotropic' or 'amortized', got {scale!r}"
            )

    @property
    def out_features(self) -> int:
        return 2 * self.data_dim if self.scale_mode == "amortized" else self.data_dim

    def loc_scale(self, out):
        if self.scale_mode == "amortized":
            loc, raw = out.split(self.data_dim, dim=-1)
            return loc, F.softplus(raw) + MIN_SCALE
        if self.scale_mode in ("learned", "learned_isotropic"):
            scale = F.softplus(self.raw_scale) + MIN_SCALE
            return out, scale.expand(out.shape)
        return out, self.fixed_scale.expand(out.shape)

    def forward(self, out):
        loc, scale = self.loc_scale(out)
        return self.family(loc, scale).to_event(1)

    def mean(self, out):
        return self.loc_scale(out)[0]


@LIKELIHOODS.register("normal")
class NormalLikelihood(_LocScale):
    name = "normal"
    family = dist.Normal


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocScale):
    name = "laplace"
    family = dist.Laplace


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    name = "bernoulli"

    def forward(self, out):
        return dist.Bernoulli(logits=out).to_event(1)

    def mean(self, out):
        return torch.sigmoid(out)

    def check_support(self, x, what="data"):
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            raise PyroVAEError(
                f"likelihood 'bernoulli' needs 0/1 data, but {what} has {_describe(x, bad)} that are not 0 or 1: "
                "set data.binarize = 'static' or 'dynamic', or use model.likelihood = 'continuous_bernoulli'"
            )


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    name = "continuous_bernoulli"

    def forward(self, out):
        return dist.ContinuousBernoulli(logits=out).to_event(1)

    def check_support(self, x, what="data"):
        bad = (x < 0) | (x > 1)
        if bool(bad.any()):
            raise PyroVAEError(
                f"likelihood 'continuous_bernoulli' needs data in [0, 1], but {what} has {_describe(x, bad)} outside it: "
                "rescale the data to [0, 1] or use model.likelihood = 'normal'"
            )


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    """Each data dimension is an integer in ``0 .. levels-1`` with its own softmax."""

    name = "categorical"
    discrete = True

    def __init__(self, data_dim, scale="learned", levels=None):
        super().__init__(data_dim)
        if levels is None or levels < 2:
            raise PyroVAEError("likelihood 'categorical' needs model.levels >= 2 (the number of integer values)")
        self.levels = int(levels)
        self.register_buffer("values", torch.arange(self.levels, dtype=torch.float32))

    @property
    def out_features(self):
        return self.data_dim * self.levels

    def forward(self, out):
        logits = out.unflatten(-1, (self.data_dim, self.levels))
        return dist.Categorical(logits=logits).to_event(1)

    def mean(self, out):
        probs = out.unflatten(-1, (self.data_dim, self.levels)).softmax(-1)
        return probs @ self.values

    def encoder_input(self, x):
        # integer levels -> [0, 1], so the encoder's first layer sees a sane range
        return x / (self.levels - 1)

    def check_support(self, x, what="data"):
        bad = (x < 0) | (x > self.levels - 1) | (x != torch.round(x))
        if bool(bad.any()):
            raise PyroVAEError(
                f"likelihood 'categorical' with model.levels = {self.levels} needs integers 0..{self.levels - 1}, "
                f"but {what} has {_describe(x, bad)} outside them: raise model.levels or fix the data"
            )
