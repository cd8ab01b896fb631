"""Guide laws of continuous nodes: how a node's encoder outputs become q(node | ...), chosen by the node's ``guide``.

A law says how many numbers it reads from the node's encoder
(``features(dim)``), the distribution they define (``law(out, dim)``) and that
distribution's mean (what ``encode`` reports).  Every continuous family
(normal, laplace, mixture) takes any law; a new law is one registry entry.
A law with learned parts of its own (the flows of flows.py) is an
``nn.Module`` class with the same three methods, built once per node by the
node's family; the static laws here are used as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pyro.distributions as dist

from ...registry import Registry

GUIDE_LAWS: Registry = Registry("guide law")

#: the floor on every scale a network predicts (a scale of 0 sends a density to infinity)
MIN_SCALE = 1e-4


class GuideLaw:
    """One continuous node's q from its encoder's outputs."""

    point_mass = False

    @staticmethod
    def features(dim: int) -> int:
        raise NotImplementedError

    @staticmethod
    def law(out: torch.Tensor, dim: int) -> dist.Distribution:
        raise NotImplementedError

    @staticmethod
    def mean(out: torch.Tensor, dim: int) -> torch.Tensor:
        raise NotImplementedError


@GUIDE_LAWS.register("normal")
class NormalLaw(GuideLaw):
    """q = N(loc, diag softplus(raw)^2): the amortized diagonal Gaussian."""

    @staticmethod
    def features(dim):
        return 2 * dim

    @staticmethod
    def law(out, dim):
        loc, raw = out.split(dim, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1)

    @staticmethod
    def mean(out, dim):
        return out[..., :dim]


@GUIDE_LAWS.register("delta")
class DeltaLaw(GuideLaw):
    """q = a point mass at the encoder's output: a deterministic encoder (an autoencoder, fitted by MAP)."""

    point_mass = True

    @staticmethod
    def features(dim):
        return dim

    @staticmethod
    def law(out, dim):
        return dist.Delta(out).to_event(1)

    @staticmethod
    def mean(out, dim):
        return out
