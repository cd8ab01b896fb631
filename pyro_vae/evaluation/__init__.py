"""Evaluation: test ELBO and its parts, node by node; importance-sampled log p(x) with error bars; active units."""

from .estimators import evaluate, evaluate_points
from .results import PointwiseEvaluation
from .nodes import NodeSummary, SiteTerm

__all__ = ["PointwiseEvaluation", "evaluate", "evaluate_points", "SiteTerm", "NodeSummary"]
