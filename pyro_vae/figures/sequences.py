"""Figures of sequences: sampled traces, and a forecast's observed prefix, reconstruction and bands over time."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional

import numpy as np

from .style import figure_style, pyplot, save_figure

#: at most this many data dimensions get a panel each (the rest are in the saved arrays)
MAX_PANELS = 4
#: at most this many sampled sequences are drawn in a panel
MAX_TRACES = 8


def _panels(dims: int):
    plt = pyplot()
    k = min(dims, MAX_PANELS)
    fig, axes = plt.subplots(k, 1, figsize=(7, 1.6 * k + 0.8), sharex=True, squeeze=False)
    return fig, [a[0] for a in axes]


@figure_style()
def save_sequence_samples(x: np.ndarray, path: Path, title: str) -> Path:
    """(n, T, D) sampled sequences: one panel per data dimension (the first few), a line per sequence."""
    x = np.asarray(x)
    fig, axes = _panels(x.shape[2])
    steps = np.arange(1, x.shape[1] + 1)
    for d, ax in enumerate(axes):
        for i in range(min(len(x), MAX_TRACES)):
            ax.plot(steps, x[i, :, d], lw=1, alpha=0.8)
        ax.set_ylabel(f"x[{d}]")
    axes[-1].set_xlabel("step t")
    fig.suptitle("\n".join(textwrap.wrap(title, width=100)), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def save_forecast(prefix: np.ndarray, fitted: np.ndarray, forecast: np.ndarray, path: Path, title: str,
                  level: float = 0.9, truth: Optional[np.ndarray] = None) -> Path:
    """One sequence's forecast: its observed prefix (T0, D), the model's mean over the prefix given q's draws
    (draws, T0, D), and the forecast's draws (draws, S, D) as a median line and a central ``level`` band."""
    prefix, fitted, forecast = np.asarray(prefix), np.asarray(fitted), np.asarray(forecast)
    t0, s = prefix.shape[0], forecast.shape[1]
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    fig, axes = _panels(prefix.shape[1])
    past, future = np.arange(1, t0 + 1), np.arange(t0 + 1, t0 + s + 1)
    for d, ax in enumerate(axes):
        ax.plot(past, prefix[:, d], "k.", ms=4, label="observed")
        ax.plot(past, np.median(fitted[:, :, d], 0), color="C0", lw=1, label="mean of p(x_t | z_t), z ~ q")
        ax.fill_between(future, np.quantile(forecast[:, :, d], lo, 0), np.quantile(forecast[:, :, d], hi, 0),
                        color="C1", alpha=0.3, lw=0, label=f"forecast, central {level:.0%}")
        ax.plot(future, np.median(forecast[:, :, d], 0), color="C1", lw=1.2, label="forecast median")
        if truth is not None:
            ax.plot(future, truth[:, d], "k.", ms=4, alpha=0.4)
        ax.axvline(t0 + 0.5, color="0.5", lw=0.8, ls="--")
        ax.set_ylabel(f"x[{d}]")
    axes[0].legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("step t")
    fig.suptitle("\n".join(textwrap.wrap(title, width=100)), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
