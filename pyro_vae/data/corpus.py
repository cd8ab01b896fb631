"""Word counts: a synthetic corpus from a known LDA (``data.source = "synthetic_corpus"``) and vocabulary files.

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

A vocabulary file (``data.vocabulary``) is one word per line, line i naming
column i; it is data, checked here and escaped wherever it is shown.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError
from .files import read_text

#: the longest word a vocabulary may hold (longer is not a word list)
MAX_WORD = 200


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


def read_vocabulary(path: str, columns: int, what: str = "data.vocabulary") -> Tuple[str, ...]:
    """The words of a vocabulary file, one a line (line i names column i), checked against ``columns``."""
    text = read_text(path, what, "give a text file of one word per line")
    lines = text.splitlines()
    if lines and lines[-1] == "":
        lines.pop()
    words = []
    seen: dict = {}
    for i, line in enumerate(lines, start=1):
        word = line.strip()
        if not word:
            raise PyroVAEError(f"{what} file {path!r}: line {i} is empty: give one word per line, line i naming "
                               "column i of the data")
        if len(word) > MAX_WORD:
            raise PyroVAEError(f"{what} file {path!r}: line {i} is {len(word)} characters long (at most {MAX_WORD}): "
                               "give one word per line")
        bad = next((c for c in word if not c.isprintable()), None)
        if bad is not None:
            raise PyroVAEError(f"{what} file {path!r}: line {i} holds the control character {bad!r}: give one "
                               "printable word per line")
        if word in seen:
            raise PyroVAEError(f"{what} file {path!r}: line {i} repeats {word!r} (line {seen[word]}): each column "
                               "needs its own word")
        seen[word] = i
        words.append(word)
    if len(words) != columns:
        raise PyroVAEError(f"{what} file {path!r} has {len(words)} words but the data has {columns} columns: give "
                           "one word per column, in column order")
    return tuple(words)


def vocabulary_text(words: Optional[Tuple[str, ...]]) -> str:
    """A vocabulary as a file's text, one word a line."""
    return "".join(w + "\n" for w in words or ())
