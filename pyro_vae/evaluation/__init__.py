"""Evaluation: test ELBO and its parts, importance-sampled log p(x) with error bars, active units."""

from .estimators import PointwiseEvaluation, evaluate, evaluate_points

__all__ = ["PointwiseEvaluation", "evaluate", "evaluate_points"]
