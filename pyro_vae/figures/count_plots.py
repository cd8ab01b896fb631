"""A count model's figures: topic-word bars, mean-variance per feature, observed vs posterior-predictive zero fraction.

Count data are not images, so a count run gets these instead of image grids.
Each is drawn from typed results (evaluation/topics.py, evaluation/count_checks.py),
in the house style, and written through the atomic writer.  Words come from a
vocabulary file, which is data: the style shows text as written (no mathtext).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .style import COLORS, INK, figure_style, pyplot, save_figure

#: the most topics the bar figure draws (the rest are in metrics.json)
MAX_TOPICS = 30
#: words per topic the bars show
BAR_WORDS = 10


@figure_style()
def topic_words(topics, path: Path) -> Path:
    """The topic-word bars (:func:`draw_topic_words`) written to ``path``."""
    return save_figure(draw_topic_words(topics), path)


def draw_topic_words(topics):
    """One panel per topic: its top words' p(word | topic) as bars, best on top, titled with its NPMI (the
    figure, unsaved: the caller draws it inside the house style and saves it)."""
    plt = pyplot()
    k = min(len(topics.top_words), MAX_TOPICS)
    cols = min(k, 5)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 0.22 * BAR_WORDS * rows + 0.8 * rows), squeeze=False)
    top = max(max(p[:BAR_WORDS]) for p in topics.top_probabilities[:k])
    for t, ax in enumerate(axes.flat):
        if t >= k:
            ax.axis("off")
            continue
        words = topics.top_words[t][:BAR_WORDS]
        probs = topics.top_probabilities[t][:BAR_WORDS]
        y = np.arange(len(words))[::-1]
        ax.barh(y, probs, color=COLORS[0])
        ax.set_yticks(y)
        ax.set_yticklabels(words)
        ax.set_xlim(0, top * 1.05)
        score = topics.npmi[t]
        ax.set_title(f"topic {t}" + ("" if score is None else f" (NPMI {score:.2f})"))
        ax.tick_params(axis="x", labelsize=7)
    more = f" (first {k} of {len(topics.top_words)})" if k < len(topics.top_words) else ""
    fig.suptitle(f"p(word | topic) of each topic's top words{more}")
    fig.tight_layout()
    return fig


def _positive(values):
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)  # log axes: a feature never seen has no point


@figure_style()
def mean_variance(checks, path: Path) -> Path:
    """Per feature, variance against mean on log axes: the data and the posterior predictive, with var = mean."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    m, v = _positive(checks.mean), _positive(checks.variance)
    pm, pv = _positive(checks.predicted_mean), _positive(checks.predicted_variance)
    ax.scatter(m, v, s=10, alpha=0.6, color=COLORS[0], label="observed")
    ax.scatter(pm, pv, s=10, alpha=0.6, color=COLORS[1], marker="x", label="posterior predictive")
    finite = np.concatenate([a[np.isfinite(a)] for a in (m, v, pm, pv)])
    if finite.size:
        lo, hi = finite.min(), finite.max()
        ax.plot([lo, hi], [lo, hi], color=INK, lw=1, ls="--", label="Poisson: variance = mean")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax)
    ax.set_xlabel("mean count per row (each feature)")
    ax.set_ylabel("variance over rows")
    ax.set_title(f"mean and variance per feature ({checks.observed}, {checks.num_rows} test rows)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _plain_ticks(ax) -> None:
    """Log-axis ticks as plain numbers (0.01, 10): matplotlib's default labels are mathtext, which the house style
    shows as written."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


@figure_style()
def zero_fraction(checks, path: Path) -> Path:
    """Per feature, the share of zero counts: observed (x) against posterior predictive (y), with y = x."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(checks.zero_fraction, checks.predicted_zero_fraction, s=10, alpha=0.6, color=COLORS[0])
    ax.plot([0, 1], [0, 1], color=INK, lw=1, ls="--", label="predicted = observed")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("observed share of zeros (each feature)")
    ax.set_ylabel("posterior-predictive share of zeros")
    ax.set_title(f"zeros per feature ({checks.observed}, {checks.num_rows} test rows)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
