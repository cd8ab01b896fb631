"""Evaluation that survives running out of device memory: the same estimates, retried in smaller chunks."""

from __future__ import annotations

from typing import Optional

from ..models.protocol import model_device
from ..runtime.memory import with_halving_budget
from .estimators import evaluate, test_elbo
from .streaming import DEFAULT_BUDGET


def evaluate_with_retry(model, x, *, budget: Optional[int] = None, log=None, **kwargs):
    """:func:`pyro_vae.evaluation.estimators.evaluate` that halves its chunk budget on out-of-memory."""
    return with_halving_budget(lambda b: evaluate(model, x, budget=b, **kwargs),
                               budget or DEFAULT_BUDGET, device=model_device(model), log=log)


def test_elbo_with_retry(model, x, *, seed: int = 0, budget: Optional[int] = None, log=None) -> float:
    """The per-point test ELBO of a training curve (:func:`~pyro_vae.evaluation.estimators.test_elbo`), retried in
    smaller chunks on out-of-memory."""
    return with_halving_budget(lambda b: test_elbo(model, x, seed=seed, budget=b),
                               budget or DEFAULT_BUDGET, device=model_device(model), log=log,
                               what="the test ELBO")


test_elbo_with_retry.__test__ = False  # not a pytest test, despite the name
