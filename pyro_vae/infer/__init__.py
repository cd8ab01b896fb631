"""Inference: objectives (ELBO variants), the trace layer, RNG streams."""

from .objectives import OBJECTIVES

__all__ = ["OBJECTIVES"]
