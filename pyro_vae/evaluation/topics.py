"""A topic model's evaluation: its topics' top words, held-out perplexity from the IS log p(x), and NPMI coherence.

A topic model here is a graph whose logistic-normal node (the topic
proportions theta) is the one parent of a multinomial observed node (the word
counts).  Topic k's word distribution is the decoder's at theta = e_k, the
document made of topic k alone, read in eval mode (batch normalization by its
running statistics), so it is what evaluation scores.

Perplexity is per word of the held-out documents' word sequences:
exp(-sum_d [log p(x_d) - log(N_d! / prod_v x_dv!)] / sum_d N_d).  The
multinomial coefficient is taken out because perplexity is defined on the
sequence of words (Blei et al. 2003), whose probability does not count the
orders a bag of words can be read in; a model that gives every word 1/V has
perplexity V.  log p(x_d) is the importance-sampled estimate, which
underestimates log p(x_d) in expectation, so the perplexity is, in
expectation, an upper bound that tightens with more samples; its standard
error is the Monte Carlo one (delta method).  The same formula with each
document's ELBO in place of log p(x_d) gives a looser bound, reported beside
it: far above the importance-sampled one, it says q is far from the posterior
(the PSIS k-hat of the weights says how far the importance-sampled one can be
trusted).

Coherence is NPMI over the held-out documents (Bouma 2009; Lau et al. 2014):
for a topic's top words, the mean over pairs of
log(P(wi, wj) / (P(wi) P(wj))) / -log P(wi, wj), with P the share of
documents that contain the word(s); a pair that never co-occurs scores -1,
one that occurs in every document +1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import PyroVAEError
from ..infer.modules import eval_mode

#: how many top words per topic NPMI reads (the usual 10) and the tables show
TOP_WORDS = 10


@dataclass
class TopicMetrics:
    """A topic model's topics and scores on held-out documents."""

    node: str  # the topic-proportion node
    observed: str  # the word-count node
    top_words: List[List[str]]  # per topic, its most probable words, best first
    top_probabilities: List[List[float]]  # p(word | topic) of each
    npmi: List[Optional[float]]  # per topic, over its top words (None: fewer than two words)
    npmi_mean: Optional[float]
    npmi_words: int  # top words per topic NPMI read
    num_documents: int
    num_words: int  # tokens in the held-out documents
    perplexity: Optional[float] = None  # None: no importance-sampled log p(x)
    perplexity_se: Optional[float] = None
    perplexity_from: str = "importance-sampled log p(x)"
    # the same from each document's ELBO instead of log p(x): a bound, never below the perplexity itself
    perplexity_elbo: Optional[float] = None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def topic_nodes(model) -> Optional[Tuple[str, str]]:
    """(theta, words) when ``model`` is a topic model (a logistic-normal node, the one parent of a multinomial
    observed node), else None."""
    graph = getattr(model, "graph", None)
    if graph is None or not hasattr(model, "nets"):
        return None
    for name in graph.order:
        node = graph.nodes[name]
        if node.role == "observed" and node.likelihood == "multinomial" and len(node.parents) == 1:
            parent = graph.nodes[node.parents[0]]
            if parent.role == "latent" and parent.family == "logistic_normal":
                return node.parents[0], name
    return None


@torch.no_grad()
def topic_word_probabilities(model, nodes: Tuple[str, str]) -> torch.Tensor:
    """(topics, words): p(word | topic k), the decoder's word distribution at theta = e_k, in eval mode."""
    theta, words = nodes
    k = model.families[theta].dim
    ref = next(model.parameters())
    with eval_mode(model):
        out = model.nets[words]({theta: torch.eye(k, dtype=ref.dtype, device=ref.device)})
        law = model.likelihoods[words](out)
    while hasattr(law, "base_dist"):
        law = law.base_dist
    return law.probs.detach().to("cpu", torch.float64)


def document_frequencies(counts: torch.Tensor) -> torch.Tensor:
    """(documents, words) bool: which words each document contains."""
    return counts > 0


def npmi(top: Sequence[int], present: torch.Tensor) -> Optional[float]:
    """NPMI of one topic: the mean over pairs of its ``top`` word indices, co-occurrence read off ``present``."""
    top = list(top)
    if len(top) < 2:
        return None
    p = present[:, top].double()
    single = p.mean(0)
    joint = (p.T @ p) / p.shape[0]
    scores = []
    for i in range(len(top)):
        for j in range(i + 1, len(top)):
            scores.append(_pair_npmi(float(joint[i, j]), float(single[i]), float(single[j])))
    return sum(scores) / len(scores)


def _pair_npmi(pij: float, pi: float, pj: float) -> float:
    if pij <= 0.0:
        return -1.0  # never together (or never seen): the conventional floor
    if pij >= 1.0:
        return 1.0  # in every document, together: the limit as P(wi, wj) -> 1
    return math.log(pij / (pi * pj)) / -math.log(pij)


def sequence_log_coefficient(counts: torch.Tensor) -> torch.Tensor:
    """Per document, log(N! / prod_v x_v!): the ways its bag of words can be ordered."""
    c = counts.double()
    return torch.lgamma(c.sum(-1) + 1) - torch.lgamma(c + 1).sum(-1)


def perplexity(log_px: torch.Tensor, counts: torch.Tensor,
               log_px_var: Optional[torch.Tensor] = None) -> Tuple[float, Optional[float]]:
    """(perplexity per word, its Monte Carlo s.e.) of documents with multinomial log-probabilities ``log_px``."""
    words = float(counts.double().sum())
    if words <= 0:
        raise PyroVAEError("perplexity needs documents with words: every held-out row is empty")
    exponent = -float((log_px.double() - sequence_log_coefficient(counts)).sum()) / words
    value = math.exp(exponent)
    se = None
    if log_px_var is not None and bool(torch.isfinite(log_px_var).all()):
        se = value * math.sqrt(float(log_px_var.double().sum())) / words
    return value, se


def topic_metrics(model, counts: torch.Tensor, vocabulary: Optional[Sequence[str]], *,
                  log_px: Optional[torch.Tensor] = None, log_px_var: Optional[torch.Tensor] = None,
                  elbo: Optional[torch.Tensor] = None, top: int = TOP_WORDS) -> Optional[TopicMetrics]:
    """The topic model's metrics on held-out ``counts`` (rows: documents), or None if ``model`` is no topic model.

    Without ``vocabulary`` the words are named by their column ("#12").  ``log_px``: each document's
    importance-sampled log p(x) (None: no perplexity); ``elbo``: each document's ELBO, for the perplexity bound.
    """
    nodes = topic_nodes(model)
    if nodes is None:
        return None
    counts = counts.detach().to("cpu")
    probs = topic_word_probabilities(model, nodes)
    if vocabulary is not None and len(vocabulary) != probs.shape[1]:
        raise PyroVAEError(f"the vocabulary has {len(vocabulary)} words but the model {probs.shape[1]}: give the "
                           "run's vocabulary file")
    names = list(vocabulary) if vocabulary is not None else [f"#{v}" for v in range(probs.shape[1])]
    t = min(top, probs.shape[1])
    best = probs.topk(t, dim=1)
    present = document_frequencies(counts)
    per_topic = [npmi(idx.tolist(), present) for idx in best.indices]
    finite = [s for s in per_topic if s is not None]
    ppl = se = None
    if log_px is not None:
        ppl, se = perplexity(log_px.to("cpu"), counts, None if log_px_var is None else log_px_var.to("cpu"))
    return TopicMetrics(
        node=nodes[0], observed=nodes[1],
        top_words=[[names[i] for i in idx.tolist()] for idx in best.indices],
        top_probabilities=[[float(p) for p in row] for row in best.values],
        npmi=per_topic, npmi_mean=sum(finite) / len(finite) if finite else None, npmi_words=t,
        num_documents=int(counts.shape[0]), num_words=int(counts.double().sum()),
        perplexity=ppl, perplexity_se=se,
        perplexity_elbo=None if elbo is None else perplexity(elbo.to("cpu"), counts)[0])
