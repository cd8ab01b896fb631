"""A topic model's figure: each topic's top words as bars of p(word | topic), for a run's plots and the report.

Drawn from typed results (evaluation/topics.py), in the house style, and
written through the atomic writer.  Words come from a vocabulary file, which
is data: the style shows text as written (no mathtext).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .style import COLORS, figure_style, pyplot, save_figure

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
    from matplotlib.ticker import MaxNLocator

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
        # three ticks a narrow panel can print apart, and the axis named under each bottom panel of its column
        ax.xaxis.set_major_locator(MaxNLocator(3))
        if t + cols >= k:
            ax.set_xlabel("p(word | topic)")
    more = f" (first {k} of {len(topics.top_words)})" if k < len(topics.top_words) else ""
    fig.suptitle(f"p(word | topic) of each topic's top words{more}")
    fig.tight_layout()
    return fig
