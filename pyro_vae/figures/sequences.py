"""Figures of sequences: sampled traces, and a forecast's observed prefix, reconstruction and bands over time."""

from __future__ import annotations

import textwrap
from pathlib import Path
from statistics import NormalDist
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


def _normal_quantile(p: float) -> float:
    """The standard normal's ``p`` quantile (a reference's central band from its sd)."""
    return NormalDist().inv_cdf(p)


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


@figure_style()
def save_step_profile(profile: dict, path: Path) -> Path:
    """The ELBO's terms per time step (evaluation/steps.py's profile): each latent stem's KL, each observed stem's
    E log p, over the steps, with how many sequences reach each step."""
    plt = pyplot()
    stems = list(profile["terms"])
    fig, axes = plt.subplots(len(stems) + 1, 1, figsize=(7, 1.8 * (len(stems) + 1) + 0.6), sharex=True,
                             squeeze=False)
    steps = np.asarray(profile["steps"])
    for ax, stem in zip(axes[:, 0], stems):
        v = np.array([np.nan if a is None else a for a in profile["terms"][stem]], dtype=float)
        ax.plot(steps, v, "o-", ms=3, lw=1)
        observed = profile["kinds"][stem] == "observed"
        ax.set_ylabel(f"E log p({stem}_t)" if observed else f"KL({stem}_t)")
    ax = axes[-1, 0]
    ax.bar(steps, profile["sequences"], color="0.6", width=0.8)
    ax.set_ylabel("sequences")
    ax.set_xlabel("step t")
    fig.suptitle("the ELBO's terms per step, averaged over the sequences that reach the step", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def save_sequence_fit(x: np.ndarray, lengths: np.ndarray, recon: np.ndarray, z: np.ndarray, path: Path,
                      level: float = 0.9, ref_mean: Optional[np.ndarray] = None, ref_sd: Optional[np.ndarray] = None,
                      ref_label: str = "Kalman smoother", names: Optional[list] = None) -> Path:
    """A few sequences: observed x_t against the mean of p(x_t | z_t) with z ~ q (median and central band over q's
    draws), and q's latent trajectories (median and band) below; steps past a sequence's length are not drawn.
    ``x`` (m, T, D), ``recon`` (draws, m, T, D), ``z`` (draws, m, T, Z); an exact Gaussian reference's per-step
    ``ref_mean`` and ``ref_sd`` (m, T, Z), when given, are drawn as dashed lines with their own central band;
    ``names`` titles each sequence (default "sequence i")."""
    plt = pyplot()
    m = min(x.shape[0], 3)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    fig, axes = plt.subplots(2, m, figsize=(3.4 * m, 4.6), squeeze=False, sharex="col")
    for i in range(m):
        n = int(lengths[i])
        t = np.arange(1, n + 1)
        ax = axes[0, i]
        for d in range(min(x.shape[2], MAX_PANELS)):
            color = f"C{d}"
            ax.plot(t, x[i, :n, d], ".", color=color, ms=3)
            ax.plot(t, np.median(recon[:, i, :n, d], 0), color=color, lw=1)
            ax.fill_between(t, np.quantile(recon[:, i, :n, d], lo, 0), np.quantile(recon[:, i, :n, d], hi, 0),
                            color=color, alpha=0.2, lw=0)
        ax.set_title(f"{names[i] if names else f'sequence {i}'} ({n} steps)", fontsize=9)
        ax = axes[1, i]
        for k in range(min(z.shape[3], MAX_PANELS)):
            color = f"C{k}"
            ax.plot(t, np.median(z[:, i, :n, k], 0), color=color, lw=1, label=f"z[{k}]")
            ax.fill_between(t, np.quantile(z[:, i, :n, k], lo, 0), np.quantile(z[:, i, :n, k], hi, 0),
                            color=color, alpha=0.2, lw=0)
            if ref_mean is not None and ref_sd is not None:
                half = _normal_quantile(hi) * ref_sd[i, :n, k]
                ax.plot(t, ref_mean[i, :n, k], "--", color=color, lw=1.2,
                        label=f"{ref_label} (dashed), its band (dotted)" if k == 0 else None)
                ax.plot(t, ref_mean[i, :n, k] - half, ":", color=color, lw=0.9)
                ax.plot(t, ref_mean[i, :n, k] + half, ":", color=color, lw=0.9)
        ax.set_xlabel("step t")
    axes[0, 0].set_ylabel("x_t, E[x_t | z_t]")
    axes[1, 0].set_ylabel(f"z_t ~ q ({level:.0%})")
    axes[1, 0].legend(fontsize=7)
    which = f"q's latent trajectories against the {ref_label}'s" if ref_mean is not None else \
        "q's latent trajectories"
    fig.suptitle(f"observed against reconstructed (z ~ q), and {which}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
