"""Guide laws of continuous nodes: how a node's encoder outputs become q(node | ...), chosen by the node's ``guide``.

A law says how many numbers it reads from the node's encoder
(``features(dim)``), the distribution they define (``law(out, dim)``) and that
distribution's mean (what ``encode`` reports).  Every continuous family
(normal, laplace, mixture) takes any law; a new law is one registry entry.
A law with a setting of its own (lowrank's ``rank``) or learned parts (the
flows of flows.py, ``nn.Module`` classes with the same calls) is bound to
the node by ``for_node``; ``warm_start(loc, scale)`` is the ``out`` of the
member of the law's family nearest N(loc, diag scale^2), where a local fit
of ``out`` starts.
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

    @classmethod
    def for_node(cls, node) -> "GuideLaw":
        """The law as ``node`` configures it (a law without settings of its own is the class itself)."""
        return cls

    @staticmethod
    def warm_start(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``out`` whose q is N(loc, diag scale^2), or nearest it in the law's family."""
        raise NotImplementedError


def raw_scale(scale: torch.Tensor) -> torch.Tensor:
    """The pre-softplus value of a predicted scale: softplus(raw) + MIN_SCALE = scale (floored just above it)."""
    s = (scale - MIN_SCALE).clamp_min(1e-6)
    return s + torch.log(-torch.expm1(-s))  # softplus^-1(s), stable for small and large s


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

    @staticmethod
    def warm_start(loc, scale):
        return torch.cat([loc, raw_scale(scale)], -1)


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

    @staticmethod
    def warm_start(loc, scale):
        return loc


@GUIDE_LAWS.register("fullrank")
class FullRankLaw(GuideLaw):
    """q = N(loc, L L^T), L an amortized Cholesky factor: softplus diagonal, free strictly-lower entries."""

    @staticmethod
    def features(dim):
        return dim + dim * (dim + 1) // 2

    @staticmethod
    def law(out, dim):
        loc, diag, lower = out.split([dim, dim, dim * (dim - 1) // 2], dim=-1)
        rows, cols = torch.tril_indices(dim, dim, -1, device=out.device)
        strict = out.new_zeros(out.shape[:-1] + (dim, dim))
        strict[..., rows, cols] = lower  # a fresh tensor written once: autograd carries the entries through
        tril = strict + torch.diag_embed(F.softplus(diag) + MIN_SCALE)
        return dist.MultivariateNormal(loc, scale_tril=tril)

    @staticmethod
    def mean(out, dim):
        return out[..., :dim]

    @staticmethod
    def warm_start(loc, scale):
        dim = loc.shape[-1]
        return torch.cat([loc, raw_scale(scale), loc.new_zeros(loc.shape[:-1] + (dim * (dim - 1) // 2,))], -1)


#: the rank of a low-rank q whose node gives none
DEFAULT_RANK = 1

#: the factor V's entries a low-rank q starts from in a local fit: at V = 0 the gradient in V is 0 too
LOWRANK_START = 1e-2


@GUIDE_LAWS.register("lowrank")
class LowRankLaw(GuideLaw):
    """q = N(loc, D + V V^T): D an amortized diagonal (softplus), V an amortized dim x ``rank`` factor.

    The registered class reads no rank; ``for_node`` binds the node's."""

    def __init__(self, rank: int):
        self.rank = int(rank)

    @classmethod
    def for_node(cls, node):
        return cls(DEFAULT_RANK if node.rank is None else node.rank)

    def features(self, dim):
        return dim * (2 + self.rank)

    def law(self, out, dim):
        loc, diag, factor = out.split([dim, dim, dim * self.rank], dim=-1)
        return dist.LowRankMultivariateNormal(loc, factor.reshape(factor.shape[:-1] + (dim, self.rank)),
                                              (F.softplus(diag) + MIN_SCALE) ** 2)

    @staticmethod
    def mean(out, dim):
        return out[..., :dim]

    def warm_start(self, loc, scale):
        dim = loc.shape[-1]
        factor = loc.new_full(loc.shape[:-1] + (dim * self.rank,), LOWRANK_START)
        # D + V V^T = diag scale^2 where it can: D takes what V V^T (LOWRANK_START^2 * rank) leaves
        diag = (scale ** 2 - LOWRANK_START ** 2 * self.rank).clamp_min(MIN_SCALE ** 2 * 4).sqrt()
        return torch.cat([loc, raw_scale(diag), factor], -1)


def rank_problem(guide: str, rank, dim) -> str:
    """Why ``rank`` does not fit a node whose guide law is ``guide`` and size ``dim`` ("" when it fits)."""
    if guide == "lowrank":
        rank = DEFAULT_RANK if rank is None else rank
        if rank < 1:
            return f"rank = {rank}: must be >= 1"
        if dim is not None and rank >= dim:
            return (f"rank = {rank} is not below the latent's dim = {dim}: a low-rank q needs rank < dim "
                    "(use guide = \"fullrank\" for a full covariance)")
        return ""
    if rank is not None:
        return f"rank = {rank} is read by guide = \"lowrank\" only, but guide = {guide!r}: remove rank"
    return ""
