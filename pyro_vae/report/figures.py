"""The report's figures: one function per figure, each drawing only saved diagnosis results."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

import numpy as np

from ..arviz_compat import group, plot_forest
from ..diagnostics.arviz_io import stored_name
from ..diagnostics.results import Diagnosis, GridPosterior, RunDiagnosis
from ..evaluation.recovery import Recovery
from ..evaluation.topics import TopicMetrics
from ..figures.counts import draw_recovery
from ..figures.topics import draw_topic_words
from ..figures.graph import draw_structure, structure_caption
from ..figures.sequences import save_sequence_fit, save_step_profile
from ..figures.style import COLORS, figure_style, image_grid, pyplot, save_figure
from ..infer.psis import KHAT_BAD, KHAT_GOOD
from .tables import unit

REF_COLOR = "#555555"


@dataclass
class Figure:
    """One saved PNG and where the report shows it."""

    file: str  # relative to the report folder
    title: str
    caption: str
    section: str

    def to_json(self) -> dict:
        """What results.json lists."""
        return {"file": self.file, "title": self.title, "caption": self.caption, "section": self.section}


# what a figure's file name keeps of a run's folder; the folder is read from diagnostics.json, so it may hold
# "/" or ".." and must not choose where a file is written
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Figures:
    """Saves figures into a folder and lists them in order."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.items: List[Figure] = []

    def save(self, fig, name: str, title: str, caption: str, section: str) -> None:
        """Save ``fig`` as ``<name>.png`` in the folder: other characters than letters, digits and ``_.-`` become
        ``_``, and a name already taken gets a number, so every figure has its own file inside the folder."""
        self.draw(lambda path: save_figure(fig, path, bbox_inches="tight"), name, title, caption, section)

    def draw(self, write: Callable[[Path], object], name: str, title: str, caption: str, section: str) -> None:
        """As :meth:`save`, for a figure that ``write(path)`` draws and saves itself (figures/'s savers)."""
        stem = _UNSAFE.sub("_", name)
        taken = {f.file for f in self.items}
        path, n = self.folder / f"{stem}.png", 1
        while f"figures/{path.name}" in taken:
            n += 1
            path = self.folder / f"{stem}-{n}.png"
        write(path)
        self.items.append(Figure(f"figures/{path.name}", title, caption, section))


def _site(label: str) -> str:
    """The site of a latent label ``site[j]`` (a site's own name may hold brackets)."""
    return label.rpartition("[")[0] or label


def _dim(label: str) -> int:
    """The dimension of a latent label ``site[j]`` within its site."""
    return int(label.rpartition("[")[2].rstrip("]"))


def _order_dims(r: RunDiagnosis) -> List[int]:
    """Latent dims, most informative first (largest posterior contraction)."""
    c = np.nan_to_num(np.asarray(r.contraction, dtype=float), nan=-1.0)
    return [int(j) for j in np.argsort(-c, kind="stable")]


def _ranking(r: RunDiagnosis) -> np.ndarray:
    """What orders points worst first: k-hat, or the amortization gap for a point-mass guide."""
    return np.asarray(r.khat.values if r.khat.values is not None else r.local.gap, dtype=float)


def fig_training(figs: Figures, diagnosis: Diagnosis) -> None:
    runs = [r for r in diagnosis.runs if r.history]
    if not runs:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, s in enumerate(runs):
        h = s.history
        c = COLORS[i % len(COLORS)]
        ep = [r["epoch"] for r in h]
        ax.plot(ep, [-r["train_loss"] if r.get("train_loss") is not None else np.nan for r in h], "--", color=c,
                alpha=0.6, label=f"{s.name}: train (minibatch)")
        test = [(r["epoch"], r["test_elbo"]) for r in h if r.get("test_elbo") is not None]
        if test:
            ax.plot(*zip(*test), "-", color=c, lw=2, label=f"{s.name}: test")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per data point (nats)")
    lows = [r["test_elbo"] for s in runs for r in s.history if r.get("test_elbo") is not None]
    if lows:  # the first epochs can be far below; keep the end of training readable
        hi = max(lows)
        lo = np.percentile(lows, 10)
        ax.set_ylim(lo - 0.3 * (hi - lo) - 1e-6, hi + 0.15 * (hi - lo) + 1e-6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Training curves")
    figs.save(fig, "training", "Training curves",
              "ELBO per data point by epoch: solid lines the test ELBO, dashed the training minibatch estimate.",
              "runs")


def fig_khat(figs: Figures, diagnosis: Diagnosis) -> None:
    runs = [r for r in diagnosis.runs if r.khat.values is not None]
    if not runs:
        return
    plt = pyplot()
    b = max(len(r.points) for r in runs)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.32 * b + 2), 4))
    ax.axhspan(-1, KHAT_GOOD, color="#2ca02c", alpha=0.07)
    ax.axhspan(KHAT_GOOD, KHAT_BAD, color="#ff7f0e", alpha=0.09)
    ax.axhspan(KHAT_BAD, 10, color="#d62728", alpha=0.07)
    ax.axhline(KHAT_GOOD, color="#ff7f0e", lw=1, ls="--")
    ax.axhline(KHAT_BAD, color="#d62728", lw=1, ls="--")
    n = len(runs)
    allk, missing = [], 0
    for i, r in enumerate(runs):
        k = np.asarray(r.khat.values, dtype=float)
        # PSIS gives no k-hat (NaN) where a point has too few draws for its tail fit: drawn as a count, not a dot
        missing += int((~np.isfinite(k)).sum())
        allk += list(k[np.isfinite(k)])
        xs = np.arange(len(k)) + (i - (n - 1) / 2) * min(0.25, 0.8 / n)
        ax.scatter(xs, k, s=28, color=COLORS[i % len(COLORS)], label=r.name, zorder=3)
        for j in np.argsort(-np.nan_to_num(k, nan=-np.inf))[:3]:
            if k[j] > KHAT_BAD:
                ax.annotate(f"test[{r.points[j]}]", (xs[j], k[j]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=COLORS[i % len(COLORS)])
    pts = runs[0].points
    if len(pts) <= 40:
        ax.set_xticks(range(len(pts)))
        ax.set_xticklabels([str(p) for p in pts], fontsize=7)
    u = unit(diagnosis)
    ax.set_xlabel(f"{u} (row of the test data)")
    ax.set_ylabel("PSIS k-hat")
    ax.set_ylim(min(-0.1, min(allk, default=0.0) - 0.05), max(1.1, max(allk, default=1.0) + 0.1))
    if missing:
        note = f"{missing} {u}(s) without a finite k-hat: too few draws for PSIS's tail fit (raise --draws)"
        ax.text(0.99, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    ax.set_xlim(-0.7, b - 0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Is q(z|x) a good importance proposal? k-hat per {u} (lower is better)")
    figs.save(fig, "khat", f"PSIS k-hat per {u}",
              f"Green: k-hat <= {KHAT_GOOD} (q covers the posterior); orange: up to {KHAT_BAD}; red: above {KHAT_BAD} "
              f"(q misses posterior mass). The worst {u}s are labelled with their test row.", "khat")


def fig_comparisons(figs: Figures, diagnosis: Diagnosis) -> None:
    runs = [r for r in diagnosis.runs if r.comparison is not None]
    if not runs:
        return
    plt = pyplot()
    panels = [("std_mean_error", "|mean error| / reference sd", False),
              ("sd_ratio", "sd ratio q / reference", True),
              ("w2", "Wasserstein-2 per latent dim", False),
              ("gap", "amortization gap (nats)", False)]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, (key, label, ratio) in zip(axes, panels):
        data = [np.asarray(r.local.gap if key == "gap" else getattr(r.comparison, key), dtype=float) for r in runs]
        ax.boxplot(data, showfliers=False, widths=0.5)
        for i, d in enumerate(data):
            jit = np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else np.zeros(1)
            ax.scatter(i + 1 + jit, d, s=12, color=COLORS[i % len(COLORS)], alpha=0.8, zorder=3)
        ax.set_xticks(range(1, len(runs) + 1))
        ax.set_xticklabels([r.name for r in runs], rotation=20, fontsize=8)
        if ratio:  # 1 is right; keep 1 in view so distance from it reads at a glance
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            lo = min(1.0, float(np.nanmin(np.concatenate(data))))
            hi = max(1.0, float(np.nanmax(np.concatenate(data))))
            pad = 0.08 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
        elif key == "gap":
            ax.axhline(0.0, color="k", lw=0.8, ls="--")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("q(z|x) against the reference, one dot per point", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "comparison", "Per-point comparisons with the reference",
              "Each dot is one diagnosed point. Errors are 0 and the sd ratio 1 for a perfect q; the amortization gap "
              "is the ELBO a q fitted to that point alone gains over the amortized q.", "comparison")


def fig_forest(figs: Figures, diagnosis: Diagnosis) -> None:
    plt = pyplot()
    runs = [r for r in diagnosis.runs if r.q_data is not None]
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 5.2), squeeze=False)
    for ax, r in zip(axes[0], runs):
        pts_all = r.points
        order = list(np.argsort(-_ranking(r)))
        pick = []
        for j in [order[0], order[len(order) // 2], 0]:
            if pts_all[j] not in pick:
                pick.append(pts_all[j])
        dims = _order_dims(r)[:2]
        labels = r.latent_labels
        site = _site(labels[dims[0]])  # ArviZ plots one variable (site) at a time
        local_dims = [_dim(labels[j]) for j in dims if _site(labels[j]) == site]
        data, names = [r.q_data], ["q(z|x)"]
        if r.reference_data is not None:
            data.append(r.reference_data)
            names.append("reference (" + r.reference.method + ")")
        var = stored_name(site)
        plot_forest(ax, data, names, var, {"point": pick, f"{var}_dim": local_dims}, [COLORS[0], REF_COLOR],
                    prob=0.9, textsize=9)  # the style's font size, not ArviZ's scaled one
        ax.set_title(f"{r.name}: 90% intervals", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "forest", "Forest plot of posterior summaries",
              "Per run, 90% highest-density intervals and medians of q(z|x) and of the reference for three points "
              "(the worst by k-hat, a typical one, the first) and the two most informative latent dimensions. "
              "Labels read z[point, dim]. Each run has its own latent space: compare q with its own reference.",
              "comparison")


def fig_pairs(figs: Figures, diagnosis: Diagnosis) -> None:
    plt = pyplot()
    for ri, r in enumerate(diagnosis.runs):
        if r.q_data is None:
            continue
        order = list(np.argsort(-_ranking(r)))
        picks = [order[0]] + ([order[len(order) // 2]] if len(order) > 1 else [])
        labels = r.latent_labels
        dims = _order_dims(r)[: min(3, len(labels))]
        zq = _draws(r.q_data, labels)
        zr = _draws(r.reference_data, labels) if r.reference_data is not None else None
        for j in picks:
            d = len(dims)
            fig, axes = plt.subplots(d, d, figsize=(2.6 * d + 0.6, 2.6 * d + 0.4), squeeze=False)
            for a in range(d):
                for c in range(d):
                    ax = axes[a, c]
                    if c > a:
                        ax.axis("off")
                        continue
                    ia, ic = dims[a], dims[c]
                    if a == c:
                        both = zq[:, j, ia] if zr is None else np.concatenate([zq[:, j, ia], zr[:, j, ia]])
                        lo, hi = np.percentile(both, [0.5, 99.5])
                        bins = np.linspace(lo, hi, 40) if hi > lo else 20
                        if zr is not None:
                            ax.hist(zr[:, j, ia], bins=bins, density=True, color=REF_COLOR, alpha=0.45, label="reference")
                        ax.hist(zq[:, j, ia], bins=bins, density=True, histtype="step", lw=1.6,
                                color=COLORS[ri % len(COLORS)], label="q(z|x)")
                        ax.set_yticks([])
                    else:
                        if zr is not None:
                            ax.scatter(zr[:, j, ic], zr[:, j, ia], s=2, color=REF_COLOR, alpha=0.25, rasterized=True)
                        ax.scatter(zq[:400, j, ic], zq[:400, j, ia], s=2, color=COLORS[ri % len(COLORS)], alpha=0.5,
                                   rasterized=True)
                        if r.grid is not None and d == 2:
                            _grid_contours(ax, r.grid, j)
                    if a == d - 1:
                        ax.set_xlabel(labels[ic])
                    if c == 0 and a != c:
                        ax.set_ylabel(labels[ia])
            handles = [plt.Line2D([], [], color=COLORS[ri % len(COLORS)], lw=2, label="q(z|x)")]
            if zr is not None:
                handles.append(plt.Line2D([], [], color=REF_COLOR, lw=6, alpha=0.5,
                                          label=f"reference ({r.reference.method})"))
            if r.grid is not None and d == 2:
                handles.append(plt.Line2D([], [], color="k", lw=1, label="exact posterior (50/90/99%)"))
            fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
            kh = f", k-hat {r.khat.values[j]:.2f}" if r.khat.values is not None else ""
            fig.suptitle(f"{r.name}: test[{r.points[j]}]{kh}", fontsize=10, x=0.05, ha="left")
            fig.tight_layout()
            which = "worst" if j == picks[0] else "typical"
            figs.save(fig, f"pair_{r.folder}_{which}", f"{r.name}: posterior of test[{r.points[j]}] ({which} point)",
                      f"Draws from q(z|x) (colour) over the reference (grey) for the {which} point by "
                      f"{'k-hat' if r.khat.values is not None else 'amortization gap'}, in the "
                      f"{'' if d == len(labels) else 'most informative '}latent dimensions.",
                      "pairs")


def _grid_contours(ax, grid: GridPosterior, j: int) -> None:
    """Contours of the exact grid posterior enclosing 50, 90 and 99% of its mass."""
    lp = np.asarray(grid.log_prob[j], dtype=float)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    flat = np.sort(p.reshape(-1))[::-1]
    cum = np.cumsum(flat)
    levels = sorted({float(flat[min(np.searchsorted(cum, q), len(flat) - 1)]) for q in (0.99, 0.9, 0.5)})
    lo, hi = np.asarray(grid.lo[j]), np.asarray(grid.hi[j])
    g = p.shape[0]
    xs = lo[0] + (np.arange(g) + 0.5) * (hi[0] - lo[0]) / g
    ys = lo[1] + (np.arange(g) + 0.5) * (hi[1] - lo[1]) / g
    if len(levels) >= 2:
        ax.contour(xs, ys, p.T, levels=levels, colors="k", linewidths=0.9)


def _draws(data, latent_labels: List[str]) -> np.ndarray:
    """ArviZ posterior -> (chains*draws, points, latent) in the order of ``latent_labels``."""
    post = group(data, "posterior")
    sites = []
    for lab in latent_labels:
        s = _site(lab)
        if s not in sites:
            sites.append(s)
    parts = []
    for s in sites:
        v = np.asarray(post[stored_name(s)].values)
        parts.append(v.reshape(v.shape[0] * v.shape[1], v.shape[2], -1))
    return np.concatenate(parts, -1)


def fig_sbc(figs: Figures, diagnosis: Diagnosis) -> None:
    runs = [r for r in diagnosis.runs if r.sbc is not None and r.sbc.ranks is not None]
    if not runs:
        return
    plt = pyplot()
    from scipy.stats import binom

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.3), squeeze=False)
    for i, (ax, r) in enumerate(zip(axes[0], runs)):
        sbc = r.sbc
        ranks = np.asarray(sbc.ranks)
        levels = sbc.draws + 1
        bins = 20 if levels % 20 == 0 else 10 if levels % 10 == 0 else min(levels, 10)
        ranks = ranks[ranks >= 0]  # a padded step's coordinate has no rank
        counts = np.bincount(np.minimum(ranks.reshape(-1) * bins // levels, bins - 1), minlength=bins)
        n = ranks.size
        lo, hi = binom.ppf([0.005, 0.995], n, 1 / bins)
        ax.axhspan(lo, hi, color="#999999", alpha=0.3, label="99% band if uniform")
        ax.bar(np.arange(bins), counts, width=0.9, color=COLORS[i % len(COLORS)], alpha=0.85)
        ax.set_xticks([0, bins - 1])
        ax.set_xticklabels(["z* below all draws", "above all"], fontsize=8)
        ax.set_title(f"{r.name}: min p = {np.nanmin(sbc.pvalues):.2g}", fontsize=9)
        ax.set_ylabel("count (all latent dims)")
        ax.legend(fontsize=7, loc="lower center")
    fig.suptitle("Simulation-based calibration: rank of the true z among draws from q(z|x)", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "sbc", "Simulation-based calibration ranks",
              "Flat within the grey band: q is calibrated. A U shape means q is too narrow (overconfident), a hump "
              "too wide, a slope biased.", "sbc")


# -- what the models generate ---------------------------------------------------


def fig_sequences(figs: Figures, diagnosis: Diagnosis) -> None:
    """A chain's figures over time: observed against reconstructed traces with q's latent trajectories (and the
    Kalman smoother's where it is the reference), and the per-step profile of the ELBO's terms; padded steps
    (past each sequence's saved length) are never drawn."""
    for r in diagnosis.runs:
        fit = r.sequences
        if fit is not None:
            exact = np.asarray(fit.reference_mean).ndim == 3
            names = [f"test[{p}]" for p in r.points[: len(fit.lengths)]]
            figs.draw(lambda path: save_sequence_fit(
                fit.data, fit.lengths, fit.reconstructions, fit.z, path, ref_mean=fit.reference_mean if exact else None,
                ref_sd=fit.reference_sd if exact else None, names=names),
                f"sequence_fit_{r.folder}", f"{r.name}: sequences observed against reconstructed",
                "Top: each diagnosed sequence's observed steps (dots) and the mean of p(x_t | z_t) with z drawn from "
                "q (median line, central 90% band over q's draws). Below: q's latent trajectories z_t (median, 90% "
                "band)" + (", with the Kalman smoother's exact posterior mean (dashed) and 90% band (dotted)"
                           if exact else "") + ". Steps past a sequence's length are padding and are not drawn.",
                "sequences")
        if r.step_profile:
            figs.draw(lambda path: save_step_profile(r.step_profile, path), f"steps_{r.folder}",
                      f"{r.name}: the ELBO's terms per time step",
                      "Each latent's KL(q(z_t | ...) || p(z_t | z_t-1)) and each observation's E_q log p(x_t | z_t) at "
                      "step t, averaged over the test sequences that reach t (padded steps count for nothing), with "
                      "how many do below: where over time the model spends its information.", "sequences")


def fig_generated(figs: Figures, diagnosis: Diagnosis) -> None:
    """Reconstructions, prior samples and latent traversals, from what diagnose decoded and saved; not for a
    model over time, whose flattened steps (padding included) read as nothing (its figures are
    :func:`fig_sequences`')."""
    runs = [r for r in diagnosis.runs if r.generated is not None and r.sequences is None and r.step_profile is None]
    if not runs:
        return
    shape = next((tuple(r.image_shape) for r in runs if r.image_shape), None)
    x0 = runs[0].generated.data
    if all(r.generated.data.shape == x0.shape and np.array_equal(r.generated.data, x0) for r in runs):
        _fig_reconstructions(figs, runs, shape)
    # a run whose columns are words shows its samples as words (the report's sampled-documents table) and its
    # topics in the topics figure: curves over hundreds of word columns read as nothing
    drawn = [r for r in runs if not has_sample_words(r)]
    if drawn:
        _fig_samples(figs, drawn, shape)
    for r in drawn:
        _fig_traversal(figs, r, shape)


def has_sample_words(r: RunDiagnosis) -> bool:
    """Whether diagnose saved the run's samples as words (its columns are a vocabulary)."""
    return r.generated is not None and np.size(r.generated.sample_words) > 0


def library_note(r: RunDiagnosis):
    """What library sizes the run's samples were scaled by, in words, or None for a model without observed ones."""
    library = np.asarray(r.generated.sample_library if r.generated is not None else [], dtype=float)
    if library.size == 0:
        return None
    return f"library sizes: the diagnosed test rows' totals, median {np.median(library):.4g}"


def _fig_reconstructions(figs: Figures, runs, shape) -> None:
    """The decoder mean at the mean of q(z|x) for the diagnosed points, every run under the data."""
    plt = pyplot()
    x0 = runs[0].generated.data
    nshow = x0.shape[0]
    recon = [r.generated.reconstructions for r in runs]
    if shape is not None:
        rows = [x0] + recon
        fig, axes = plt.subplots(len(rows), 1, figsize=(0.75 * nshow + 1.6, 0.85 * len(rows) + 0.4), squeeze=False)
        for ax, img, label in zip(axes[:, 0], rows, ["data"] + [r.name for r in runs]):
            ax.imshow(image_grid(img, shape, nshow), vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    else:
        k = min(3, nshow)
        fig, axes = plt.subplots(k, 1, figsize=(8, 1.9 * k), sharex=True, squeeze=False)
        for i in range(k):
            ax = axes[i, 0]
            ax.plot(x0[i], "k.-", lw=1, label="data")
            for ci, (r, rec) in enumerate(zip(runs, recon)):
                ax.plot(rec[i], ".-", lw=1, color=COLORS[ci % len(COLORS)], label=r.name)
            ax.set_ylabel(f"test[{runs[0].points[i]}]\nvalue", fontsize=8)
        axes[0, 0].legend(fontsize=7, loc="upper right")
        axes[-1, 0].set_xlabel("data column (feature)")
    fig.suptitle("Reconstructions: mean of p(x|z) at the mean of q(z|x)", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "reconstructions", "Reconstructions", "Top row: the diagnosed test points; below, each run's "
              "decoder mean at the mean of its q(z|x).", "generated")


def _fig_samples(figs: Figures, runs, shape) -> None:
    """Decoder means of draws from the prior, one panel per run."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(3.4 * len(runs), 3.6), squeeze=False)
    notes = []
    for ax, r in zip(axes[0], runs):
        xs = r.generated.samples
        if shape is not None:
            ax.imshow(image_grid(xs, shape, 8), vmin=0, vmax=1)
            ax.axis("off")
        else:
            ax.plot(xs[:8].T, alpha=0.7)
            ax.set_xlabel("data column (feature)")
            ax.set_ylabel("mean of p(x|z)")
        note = library_note(r)
        ax.set_title(r.name if note is None else f"{r.name}\n{note}", fontsize=9)
        if note is not None:
            notes.append(f"{r.name}: {note}")
    fig.suptitle("Samples: mean of p(x|z), z ~ p(z)", fontsize=10)
    fig.tight_layout()
    library = (" Each sample of a count model with observed library sizes is scaled by one: "
               + "; ".join(notes) + " (in turn, sample j by row j's).") if notes else ""
    figs.save(fig, "samples", "Samples from the prior", f"Decoder means of {len(runs[0].generated.samples)} draws "
              "z ~ p(z) per run (the same seed for every run)." + library, "generated")


def _fig_traversal(figs: Figures, r: RunDiagnosis, shape) -> None:
    """One run's latent traversals: each row moves one latent dimension from the first point's encoding."""
    plt = pyplot()
    g = r.generated
    dims, steps, xs = [int(j) for j in g.traversal_dims], np.asarray(g.traversal_steps), g.traversal
    labels = r.latent_labels
    if shape is not None:
        fig, ax = plt.subplots(figsize=(0.72 * len(steps) + 1.8, 0.75 * len(dims) + 0.9))
        ax.imshow(image_grid(xs, shape, len(steps)), vmin=0, vmax=1)
        h = shape[0] + 1
        ax.set_yticks([i * h + shape[0] / 2 for i in range(len(dims))])
        ax.set_yticklabels([labels[j] for j in dims], fontsize=8)
        w = shape[1] + 1
        ax.set_xticks([i * w + shape[1] / 2 for i in range(len(steps))])
        ax.set_xticklabels([f"{t:+.1f}" for t in steps], fontsize=7)
        ax.set_xlabel("value in prior standard deviations")
    else:
        plt_cm = plt.get_cmap("viridis")
        fig, axes = plt.subplots(len(dims), 1, figsize=(7.5, 1.5 * len(dims) + 0.6), sharex=True, squeeze=False)
        for a, j in enumerate(dims):
            for ti in range(len(steps)):
                axes[a, 0].plot(xs[a * len(steps) + ti], color=plt_cm(ti / (len(steps) - 1)), lw=1)
            axes[a, 0].set_ylabel(labels[j], fontsize=8)
        axes[-1, 0].set_xlabel(f"data column (feature); colour: {steps[0]:+.1f} to {steps[-1]:+.1f} prior sd")
    ax0 = fig.axes[0]
    ax0.set_title(f"{r.name}: latent traversals from the encoding of test[{r.points[0]}]", fontsize=10)
    fig.tight_layout()
    figs.save(fig, f"traversal_{r.folder}", f"{r.name}: latent traversals",
              f"Each row moves one latent dimension (most informative first) from {steps[0]:+.1f} to {steps[-1]:+.1f} "
              "prior standard deviations, the others held at the mean of q(z|x) for the first diagnosed point.",
              "generated")


# -- the model's graph -----------------------------------------------------------


def fig_structure(figs: Figures, diagnosis: Diagnosis) -> None:
    """Each run's model graph (none for a diagnosis saved before graphs were kept)."""
    for r in diagnosis.runs:
        if r.structure is None:
            continue
        fig = draw_structure(r.structure, f"{r.name}: the model's graph")
        figs.save(fig, f"graph_{r.folder}", f"{r.name}: the model's graph", structure_caption(r.structure),
                  "structure")


def fig_gaps(figs: Figures, diagnosis: Diagnosis) -> None:
    """Each run's inference gap as its two parts, stacked, with 2 s.e. bars; a richer family's approximation gap
    beside them."""
    runs = [r for r in diagnosis.runs if r.gaps is not None]
    if not runs:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(runs) + 2.5) + 2.6, 3.8))
    xs = np.arange(len(runs))
    approx = np.array([r.gaps.own.total_approximation for r in runs])
    amort = np.array([r.gaps.own.total_amortization for r in runs])
    ax.bar(xs - 0.18, approx, 0.36, color=COLORS[0], label="approximation gap (q's family)")
    ax.bar(xs - 0.18, amort, 0.36, bottom=approx, color=COLORS[1], label="amortization gap (the encoder)")
    ax.errorbar(xs - 0.18, approx + amort, yerr=[2 * r.gaps.total_inference_se for r in runs], fmt="none",
                ecolor="k", capsize=3, lw=1)
    richer = [(i, s) for i, r in enumerate(runs) for s in r.gaps.richer[:1]]
    if richer:
        ax.bar([i + 0.18 for i, _ in richer], [s.total_approximation for _, s in richer], 0.36, color=COLORS[2],
               label=f"approximation gap of {richer[0][1].family} q*")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels([r.name for r in runs], fontsize=8)
    ax.set_ylabel("nats per point")
    # beside the bars, not over them: a tall stack reaches any corner inside the axes
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Why is the ELBO loose? The inference gap log p(x) - ELBO(q), split", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "gaps", "The inference gap and its parts",
              "Per run, the inference gap (the stacked bar, with 2 s.e.) as the approximation gap of q's own family "
              "plus the amortization gap of its encoder; beside it, the approximation gap of a richer family's "
              "per-point q*: how much of the gap a better family would close.", "side_by_side")


def fig_topics(figs: Figures, diagnosis: Diagnosis) -> None:
    """A topic model's topic-word bars, one figure per run, from the topics its metrics.json saved."""
    for r in diagnosis.runs:
        t = r.info.get("topics")
        if not isinstance(t, dict) or not t.get("top_words"):
            continue
        fig = draw_topic_words(TopicMetrics(**{k: t.get(k) for k in TopicMetrics.__dataclass_fields__}))
        figs.save(fig, f"topics_{r.folder}", f"{r.name}: topics", "Each topic's most probable words and "
                  "p(word | topic), the decoder's word distribution at theta = that topic alone; the title gives the "
                  "topic's NPMI over the held-out documents.", "topics")


def fig_recovery(figs: Figures, diagnosis: Diagnosis) -> None:
    """A synthetic run's learned parameters against its source's truth, from the recovery its metrics.json saved."""
    for r in diagnosis.runs:
        try:
            found = Recovery.from_json(r.info["recovery"])
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # none, or not as evaluate writes it: the table shows what it can
        figs.save(draw_recovery(found), f"recovery_{r.folder}", f"{r.name}: recovery of the truth",
                  "The run's data came from a synthetic source whose parameters are known (the run's truth.npz). "
                  "Per feature, the learned inverse dispersion (log axes) and dropout probability, read off "
                  "p(x | z) at draws z ~ q(z | x) of the held-out rows, against the true ones; for a topic model, "
                  "each true topic's cosine with each learned topic's word distribution, in the one-to-one "
                  "matching's order.", "recovery")


def draw_all(figs: Figures, diagnosis: Diagnosis) -> List[Figure]:
    """Every figure the saved results allow, in the report's order."""
    with figure_style():
        for fig in (fig_training, fig_structure, fig_gaps, fig_khat, fig_comparisons, fig_forest, fig_pairs, fig_sbc,
                    fig_sequences, fig_generated, fig_topics, fig_recovery):
            fig(figs, diagnosis)
    return figs.items
