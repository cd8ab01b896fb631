"""Word counts: a synthetic corpus from a known LDA (``data.source = "synthetic_corpus"``) and its generated vocabulary.

The corpus is Blei et al.'s generative process with known parameters:
topics beta_k ~ Dirichlet(corpus_beta) over ``synthetic_dim`` words, each
document's proportions theta_d ~ Dirichlet(corpus_alpha) over
``synthetic_latent_dim`` topics, its length N_d ~ 1 + Poisson(corpus_length - 1)
(never empty: a multinomial row needs a word), and its counts
x_d ~ Multinomial(N_d, theta_d^T beta).  The truth (topics, proportions) goes
with the data, so that recovery can be checked.  Its vocabulary is generated
too: word v is named after the true topic it is likeliest under and its rank
there ("t3w007": topic 3's seventh word), so a learned topic's top words show
at a glance which true topic it found.

A vocabulary file of your own (``data.vocabulary``) is read by data/names.py,
the one reader of a matrix's column names.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def corpus_truth(cfg) -> dict:
    """The corpus's topics (K x V, rows on the simplex) and word names: a fixed function of ``data.split_seed``."""
    rng = np.random.default_rng([cfg.split_seed, 0x7091C5])
    k, v = cfg.synthetic_latent_dim, cfg.synthetic_dim
    topics = rng.dirichlet(np.full(v, cfg.corpus_beta), size=k)
    topics = np.maximum(topics, 1e-12)
    topics /= topics.sum(1, keepdims=True)
    return {"topics": torch.tensor(topics, dtype=torch.float32), "alpha": float(cfg.corpus_alpha),
            "beta": float(cfg.corpus_beta), "doc_length": float(cfg.corpus_length),
            "vocabulary": generated_vocabulary(topics)}


def generated_vocabulary(topics: np.ndarray) -> Tuple[str, ...]:
    """Each word named after its likeliest true topic and its rank among that topic's words: "t{k}w{rank}"."""
    k, v = topics.shape
    owner = topics.argmax(0)
    names = [""] * v
    width_k, width_w = len(str(k - 1)), len(str(v))
    for t in range(k):
        words = np.flatnonzero(owner == t)
        for rank, w in enumerate(words[np.argsort(-topics[t, words], kind="stable")], start=1):
            names[w] = f"t{t:0{width_k}d}w{rank:0{width_w}d}"
    return tuple(names)


def synthetic_corpus(cfg) -> Tuple[torch.Tensor, dict]:
    """(counts, truth): ``data.num_points`` documents of the known LDA, float32 word counts, one row each."""
    truth = corpus_truth(cfg)
    rng = np.random.default_rng([cfg.split_seed, 0xD0C5])
    n, k = cfg.num_points, cfg.synthetic_latent_dim
    theta = rng.dirichlet(np.full(k, cfg.corpus_alpha), size=n)
    lengths = 1 + rng.poisson(cfg.corpus_length - 1, size=n)
    words = theta @ truth["topics"].double().numpy()
    words /= words.sum(1, keepdims=True)
    counts = np.stack([rng.multinomial(m, p) for m, p in zip(lengths, words)])
    truth["proportions"] = torch.tensor(theta, dtype=torch.float32)
    return torch.tensor(counts, dtype=torch.float32), truth
