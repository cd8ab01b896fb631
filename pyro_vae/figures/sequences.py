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


def _whole_steps(ax) -> None:
    """Ticks at whole steps only: a step t is a count, never 2.5."""
    ax.locator_params(axis="x", integer=True)


def _normal_quantile(p: float) -> float:
    """The standard normal's ``p`` quantile (a reference's central band from its sd)."""
    return NormalDist().inv_cdf(p)


@figure_style()
def save_sequence_samples(x: np.ndarray, path: Path, title: str) -> Path:
    """(n, T, D) sampled sequences: one panel per data dimension (the first few), a line per sequence."""
    x = np.asarray(x)
    if x.shape[2] > MAX_PANELS:
        return _save_rolls([(f"sample {i}", x[i], None) for i in range(min(len(x), MAX_PANELS))], path, title,
                           "x_t: the mean of p(x_t | z_t)")
    fig, axes = _panels(x.shape[2])
    steps = np.arange(1, x.shape[1] + 1)
    for d, ax in enumerate(axes):
        for i in range(min(len(x), MAX_TRACES)):
            ax.plot(steps, x[i, :, d], lw=1, alpha=0.8)
        ax.set_ylabel(f"x[{d}]")
    axes[-1].set_xlabel("step t")
    _whole_steps(axes[-1])
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
    if prefix.shape[1] > MAX_PANELS:  # too many dimensions for a line each: the prefix and the forecast as rolls
        return _save_rolls([("observed prefix, then the forecast's mean over its draws",
                             np.concatenate([prefix, forecast.mean(0)], 0), t0),
                            ("the model's mean over the prefix (z ~ q), then the forecast's",
                             np.concatenate([np.median(fitted, 0), forecast.mean(0)], 0), t0)], path, title,
                           "x_t, E[x_t]")
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
    _whole_steps(axes[-1])
    fig.suptitle("\n".join(textwrap.wrap(title, width=100)), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _save_rolls(rolls, path: Path, title: str, label: str) -> Path:
    """Sequences of many dimensions (88 notes a step) as rolls, one panel each: (title, (T, D) array, the step
    after which a forecast starts or None), over the dimensions any of them uses, on one grey scale."""
    plt = pyplot()
    stacked = np.concatenate([r for _, r, _ in rolls], 0)
    used = np.flatnonzero(np.abs(stacked) >= 0.05 * max(float(np.abs(stacked).max()), 1e-12)) % stacked.shape[1]
    used = np.unique(used) if used.size else np.arange(stacked.shape[1])
    low, high = min(0.0, float(stacked[:, used].min())), max(float(stacked[:, used].max()), 1e-12)
    fig, axes = plt.subplots(len(rolls), 1, figsize=(7.5, 1.9 * len(rolls) + 0.8), squeeze=False, sharex=True,
                             layout="constrained")
    im = None
    for ax, (name, roll, start) in zip(axes[:, 0], rolls):
        steps = roll.shape[0]
        im = ax.imshow(roll[:, used].T, aspect="auto", origin="lower", interpolation="nearest", cmap="Greys",
                       vmin=low, vmax=high, extent=(0.5, steps + 0.5, -0.5, len(used) - 0.5))
        if start is not None:
            ax.axvline(start + 0.5, color="C1", lw=1.2, ls="--")
        ax.set_title(name, fontsize=8)
        ax.set_ylabel(f"dim ({len(used)} of {roll.shape[1]})", fontsize=8)
        if len(used) <= 12:
            ax.set_yticks(range(len(used)), [str(int(d)) for d in used], fontsize=7)
    axes[-1, 0].set_xlabel("step t")
    _whole_steps(axes[-1, 0])
    fig.colorbar(im, ax=axes[:, 0].tolist(), fraction=0.03, pad=0.01, label=label)
    fig.suptitle("\n".join(textwrap.wrap(title, width=100)), fontsize=9)
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
    _whole_steps(ax)
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
    # more data dimensions than lines can show (88 notes of a chorale): each sequence as a roll, observed above
    # and E[x_t | z_t] below, over the dimensions any shown sequence uses; else a line per dimension
    rolls = x.shape[2] > MAX_PANELS
    rows = 3 if rolls else 2
    fig, axes = plt.subplots(rows, m, figsize=(3.4 * m + (0.8 if rolls else 0), 6.6 if rolls else 4.6), squeeze=False,
                             sharex="col", layout="constrained")
    used = np.flatnonzero((np.abs(x[:m]) > 0).any((0, 1)) | (np.median(recon[:, :m], 0) >= 0.5).any((0, 1)))
    used = used if used.size else np.arange(x.shape[2])
    # one grey scale for every roll, observed and reconstructed alike, so that their shades compare
    shown = np.concatenate([x[:m, :, used].ravel(), np.median(recon[:, :m][..., used], 0).ravel()])
    low, high = min(0.0, float(shown.min())), max(float(shown.max()), 1e-12)
    im = None
    for i in range(m):
        n = int(lengths[i])
        t = np.arange(1, n + 1)
        if rolls:
            mean = np.median(recon[:, i, :n][..., used], 0)
            for ax, roll, what in ((axes[0, i], x[i, :n][:, used], "observed"), (axes[1, i], mean, "E[x_t | z_t]")):
                im = ax.imshow(roll.T, aspect="auto", origin="lower", interpolation="nearest", cmap="Greys",
                               vmin=low, vmax=high, extent=(0.5, n + 0.5, -0.5, len(used) - 0.5))
                ax.set_title(f"{names[i] if names else f'sequence {i}'} ({n} steps): {what}", fontsize=8)
                if len(used) <= 12:  # the dimensions' own numbers, where they fit
                    ax.set_yticks(range(len(used)), [str(int(d)) for d in used], fontsize=7)
        else:
            ax = axes[0, i]
            for d in range(x.shape[2]):
                color = f"C{d}"
                ax.plot(t, x[i, :n, d], ".", color=color, ms=3, label=f"x[{d}] observed" if i == 0 else None)
                ax.plot(t, np.median(recon[:, i, :n, d], 0), color=color, lw=1)
                ax.fill_between(t, np.quantile(recon[:, i, :n, d], lo, 0), np.quantile(recon[:, i, :n, d], hi, 0),
                                color=color, alpha=0.2, lw=0)
            ax.set_title(f"{names[i] if names else f'sequence {i}'} ({n} steps)", fontsize=9)
        ax = axes[rows - 1, i]
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
        _whole_steps(ax)
    if rolls:
        fig.colorbar(im, ax=axes[:2, :].ravel().tolist(), fraction=0.03, pad=0.01, label="x_t, E[x_t | z_t]")
        used_of = f"{len(used)} of {x.shape[2]}"
        axes[0, 0].set_ylabel(f"dimension ({used_of} used)")
        axes[1, 0].set_ylabel(f"dimension ({used_of} used)")
    else:
        axes[0, 0].set_ylabel("x_t (dots), E[x_t | z_t]")
        axes[0, 0].legend(fontsize=7)
    axes[rows - 1, 0].set_ylabel(f"z_t ~ q ({level:.0%})")
    axes[rows - 1, 0].legend(fontsize=7)
    which = f"q's latent trajectories against the {ref_label}'s" if ref_mean is not None else \
        "q's latent trajectories"
    fig.suptitle(f"observed against reconstructed (z ~ q), and {which}", fontsize=9)
    return save_figure(fig, path)  # laid out by matplotlib's constrained layout, colorbar included
