"""Recovery of a synthetic source's truth: learned inverse dispersion and dropout against the true ones per feature, topics matched by cosine.

A run on ``synthetic_counts`` knows each feature's true inverse dispersion
theta_d and dropout probability pi_d; one on ``synthetic_corpus`` knows its
true topics (topic-word distributions).  What the model learned is read off
its observed sample site, as evaluation scores it: the site's law is traced
with z ~ q(z | x) on the held-out rows (``draws`` times each), and

- theta_d is the geometric mean over those of the law's ``total_count`` (one
  learned value per feature under ``dispersion = "feature"``, so exactly it;
  the typical one per feature when amortized or per category);
- pi_d is the mean of the law's ``gate``, the dropout probability of the
  feature's counts given the rows;

each against the truth as a median relative error |learned - true| / true
over the features (dropout also as a median absolute error, since a true pi_d
near 0 makes a relative error large for a small miss).  Topics: each true
topic's best cosine similarity to a learned topic (evaluation/topics.py's
p(word | topic)), and the mean over a one-to-one (Hungarian) matching.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np
import torch
import pyro.distributions as dist
from pyro import poutine

from ..data import batch
from ..infer.data_name import named_data
from ..infer.modules import eval_mode
from ..infer.rng import isolated_rng
from ..models.params import model_params
from .topics import topic_nodes, topic_word_probabilities


@dataclass
class FeatureRecovery:
    """One per-feature parameter, learned against true: both per feature, and the median errors over features."""

    learned: List[float]
    true: List[float]
    median_relative_error: Optional[float]  # over the features whose true value is above 0
    median_absolute_error: float

    @classmethod
    def of(cls, learned: np.ndarray, true: np.ndarray) -> "FeatureRecovery":
        learned, true = np.asarray(learned, np.float64), np.asarray(true, np.float64)
        pos = true > 0
        rel = float(np.median(np.abs(learned[pos] - true[pos]) / true[pos])) if pos.any() else None
        return cls(learned.tolist(), true.tolist(), rel, float(np.median(np.abs(learned - true))))


@dataclass
class TopicRecovery:
    """Learned topics against the true ones: cosine similarity of their word distributions."""

    cosine: List[List[float]]  # (true topics, learned topics)
    best_match: List[float]  # per true topic, its best cosine with any learned topic
    matched: List[int]  # per true topic, the learned topic the one-to-one matching gives it (-1: none left)
    matched_mean: float  # the mean cosine over that matching


@dataclass
class Recovery:
    """What a run recovered of its synthetic source's truth (None: not asked of this model or source)."""

    theta: Optional[FeatureRecovery] = None
    dropout: Optional[FeatureRecovery] = None
    topics: Optional[TopicRecovery] = None
    draws: int = 0  # z ~ q(z | x) per held-out row that theta and dropout were read at
    points: int = 0

    def to_json(self) -> dict:
        """metrics.json's "recovery": every field, the per-feature values too (the report draws them)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Recovery":
        """Back from :meth:`to_json` (a run's metrics.json)."""
        theta, dropout, topics = (d.get(k) for k in ("theta", "dropout", "topics"))
        return cls(None if theta is None else FeatureRecovery(**theta),
                   None if dropout is None else FeatureRecovery(**dropout),
                   None if topics is None else TopicRecovery(**topics), int(d.get("draws", 0)), int(d.get("points", 0)))


def _base(fn):
    while isinstance(fn, (dist.Independent, torch.distributions.Independent)):
        fn = fn.base_dist
    return fn


def _total_count(fn) -> Optional[torch.Tensor]:
    """The inverse dispersion of a (zero-inflated) negative binomial law, or None for another law."""
    fn = _base(fn)
    inner = getattr(fn, "base_dist", fn)
    if isinstance(inner, dist.NegativeBinomial):
        return inner.total_count
    return None


def _gate(fn) -> Optional[torch.Tensor]:
    fn = _base(fn)
    return fn.gate if isinstance(fn, dist.ZeroInflatedDistribution) else None


@torch.no_grad()
def site_parameters(model, data, draws: int = 4, seed: int = 0, chunk: int = 512):
    """(geometric mean of theta, mean of the dropout gate) per feature over the rows of ``data`` and ``draws``
    draws z ~ q(z | x) each; either None where the model's observed law has none."""
    data = named_data(model, data)
    n = batch.num_rows(data)
    log_theta = gate = None
    with model_params(model), eval_mode(model), isolated_rng(seed, batch.reference(data).device):
        for start in range(0, n, chunk):
            rows = batch.rows(data, torch.arange(start, min(n, start + chunk)))
            for _ in range(draws):
                guide = poutine.trace(model.guide).get_trace(**rows)
                tr = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(**rows)
                site = tr.nodes[model.obs_site]
                value = site["value"]
                theta, pi = _total_count(site["fn"]), _gate(site["fn"])
                if theta is not None:
                    s = torch.broadcast_to(theta, value.shape).double().log().reshape(-1, value.shape[-1]).sum(0)
                    log_theta = s if log_theta is None else log_theta + s
                if pi is not None:
                    s = torch.broadcast_to(pi, value.shape).double().reshape(-1, value.shape[-1]).sum(0)
                    gate = s if gate is None else gate + s
    count = n * draws
    return (None if log_theta is None else (log_theta / count).exp().cpu().numpy(),
            None if gate is None else (gate / count).cpu().numpy())


def topic_recovery(learned: np.ndarray, true: np.ndarray) -> TopicRecovery:
    """Each true topic's cosine with each learned one (rows: topics over the same words)."""
    from scipy.optimize import linear_sum_assignment  # scipy is slow to import; only a topic run needs it

    def unit(a):
        a = np.asarray(a, np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)

    cos = unit(true) @ unit(learned).T
    rows, cols = linear_sum_assignment(cos, maximize=True)
    matched = [-1] * cos.shape[0]
    for r, c in zip(rows, cols):
        matched[r] = int(c)
    return TopicRecovery(cos.tolist(), cos.max(1).tolist(), matched, float(cos[rows, cols].mean()))


def recovery(model, data, truth: Optional[dict], *, draws: int = 4, seed: int = 0) -> Optional[Recovery]:
    """What ``model`` recovered of ``truth`` (a synthetic source's, e.g. the arrays of a run's truth.npz) on the
    held-out ``data``, or None when the truth holds nothing this model learns."""
    if not truth:
        return None
    found = Recovery()
    nodes = topic_nodes(model)
    if "topics" in truth and nodes is not None:
        learned = topic_word_probabilities(model, nodes).numpy()
        true = np.asarray(truth["topics"], np.float64)
        if true.ndim == 2 and true.shape[1] == learned.shape[1]:
            found.topics = topic_recovery(learned, true)
    wants_theta, wants_dropout = "theta" in truth, "dropout" in truth and bool(np.any(np.asarray(truth["dropout"]) > 0))
    if wants_theta or wants_dropout:
        theta, gate = site_parameters(model, data, draws=draws, seed=seed)
        d = None if theta is None and gate is None else len(theta if theta is not None else gate)
        if theta is not None and wants_theta and np.shape(truth["theta"]) == (d,):
            found.theta = FeatureRecovery.of(theta, truth["theta"])
        if gate is not None and wants_dropout and np.shape(truth["dropout"]) == (d,):
            found.dropout = FeatureRecovery.of(gate, truth["dropout"])
        if found.theta is not None or found.dropout is not None:
            found.draws, found.points = draws, batch.num_rows(named_data(model, data))
    if found.theta is None and found.dropout is None and found.topics is None:
        return None
    return found
