"""Diagnostics -> a report people can read: ``index.html``, ``report.md``, ``results.json``.

The tables are built once, as data (:func:`build_tables`): ``results.json``
holds them with full-precision numbers, and the HTML and Markdown show the
same rows formatted to 4 significant digits, so every number a reader sees
can be traced to the JSON.  Figures are PNGs in ``figures/``; ``index.html``
embeds them as base64 so the page is one self-contained file (mail it, open
it offline), and ``report.md`` links the files.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from pyro import poutine

from ..diagnostics.settings import KHAT_BAD, KHAT_GOOD, RHAT_FAIL, RHAT_FRACTION, RHAT_MAX, Subject
from ..diagnostics.results import Diagnosis
from ..serialize import to_plain
from ..diagnostics.draws import _layout
from ..diagnostics.arviz_io import arviz
from ..infer.rng import isolated_rng
from ..models.protocol import model_device
from ..errors import PyroVAEError

RESULTS_FORMAT = "pyro_vae.report/1"
MISSING = "—"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
REF_COLOR = "#555555"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------
# tables (data first; HTML and Markdown only format them)


def fmt(v) -> str:
    """How a table cell shows a value: 4 significant digits, integers exact, None as a dash."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return MISSING
        return f"{v:.4g}"
    return str(v)


def _khat_verdict(s: dict) -> str:
    if s.get("khat_bad") is None:
        return "n/a (point-mass guide)"
    n = s["points"]
    if s["khat_bad"] > n / 2:
        return "POOR: q misses posterior mass"
    if s["khat_bad"] > 0:
        return "mixed: check the worst points"
    return "good" if s["khat_ok"] == 0 else f"good (k-hat {KHAT_GOOD}-{KHAT_BAD} for {s['khat_ok']} of {n})"


def _rhat_count(info: dict) -> str:
    """How many (point, latent dim) pairs have R-hat above the threshold, as "k of n"."""
    return f"{info['rhat_above']} of {int(np.size(info['rhat']))}"


def build_tables(results: dict) -> List[dict]:
    """The report's tables as ``{id, title, columns, rows, note}`` with raw values in the rows."""
    runs = results["runs"]
    tables = []

    rows = []
    for r in runs:
        i, s = r["info"], r["summary"]
        rows.append([r["name"], i.get("objective"), i.get("guide"), len(r["latent_labels"]), s["active_dims"],
                     i.get("epochs"), i.get("test_elbo"), i.get("log_likelihood"), i.get("log_likelihood_se")])
    tables.append({
        "id": "runs", "title": "Runs",
        "columns": ["run", "objective", "guide", "latent dims", "active dims", "epochs", "test ELBO",
                    "log p(x)", "log p(x) s.e."],
        "rows": rows,
        "note": "Test ELBO and importance-sampled log p(x) per data point in nats, from the run's metrics.json. "
                "Active dims: latent dimensions whose posterior variance is at least 10% below the prior's "
                "(averaged over the diagnosed points).",
    })

    rows = []
    for r in runs:
        s = r["summary"]
        rows.append([r["name"], s["points"], s["khat_median"], s["khat_max"], s["khat_good"], s["khat_ok"],
                     s["khat_bad"], _khat_verdict(s)])
    tables.append({
        "id": "khat", "title": "PSIS k-hat of q(z|x), per data point",
        "columns": ["run", "points", "median k-hat", "max k-hat", f"k-hat <= {KHAT_GOOD}",
                    f"{KHAT_GOOD} < k-hat <= {KHAT_BAD}", f"k-hat > {KHAT_BAD}", "verdict"],
        "rows": rows,
        "note": f"k-hat is the Pareto shape of the importance weights p(x, z) / q(z|x), z ~ q(z|x), fitted to each "
                f"point's own {results['settings']['draws']} draws. Below {KHAT_GOOD}: q covers the posterior well; "
                f"{KHAT_GOOD}-{KHAT_BAD}: usable with care; above {KHAT_BAD}: q misses posterior mass and "
                "importance sampling (and posterior summaries from q) cannot be trusted for that point.",
    })

    rows = []
    for r in runs:
        for rank, w in enumerate(r["summary"]["worst"], 1):
            rows.append([r["name"], rank, f"test[{w['point']}]", w["khat"], w["std_mean_error"], w["gap"]])
    tables.append({
        "id": "worst", "title": "Worst points (highest k-hat)",
        "columns": ["run", "rank", "point", "k-hat", "|mean error| / reference sd", "amortization gap"],
        "rows": rows,
        "note": "Points are rows of the run's test data. The amortization gap is in nats.",
    })

    rows, check_rows = [], []
    for r in runs:
        ref = r["reference"]
        m = ref["method"]
        if m == "none":
            rows.append([r["name"], "none", None, None, None, None, None, None, None, None])
            continue
        if m == "grid":
            rows.append([r["name"], f"exact grid ({ref['cells']} cells)", None, ref["draws"], None, None, None, None,
                         None, ref["seconds"]])
        else:
            rows.append([r["name"], "NUTS", ref["chains"], ref["draws"], ref["rhat_max"], _rhat_count(ref),
                         ref["ess_bulk_min"], ref["ess_tail_min"], ref["divergences"], ref["seconds"]])
        if "nuts" in ref:
            n = ref["nuts"]
            check_rows.append([r["name"], n["chains"], n["draws"], n["rhat_max"], _rhat_count(n), n["ess_bulk_min"],
                               n["divergences"],
                               n["max_std_mean_error_vs_grid"], n["max_sd_ratio_error_vs_grid"], n["seconds"]])
    tables.append({
        "id": "reference", "title": "Reference posterior (decoder fixed)",
        "columns": ["run", "method", "chains", "draws per chain", "max R-hat", f"R-hat > {RHAT_MAX}",
                    "min bulk ESS", "min tail ESS", "divergences", "seconds"],
        "rows": rows,
        "note": f"One R-hat and ESS (ArviZ, rank-normalized) per point and latent dimension. NUTS chains should "
                f"agree (R-hat <= {RHAT_MAX}; among hundreds of pairs a few slightly above are expected by chance, "
                f"a report warns above {RHAT_FAIL} or for more than {RHAT_FRACTION:.0%} of them) and give >= 100 "
                "effective draws. A 2-D latent gets the exact posterior on a grid instead (its draws are only for "
                "the figures).",
    })
    if check_rows:
        tables.append({
            "id": "nuts_check", "title": "NUTS checked against the exact grid posterior",
            "columns": ["run", "chains", "draws per chain", "max R-hat", f"R-hat > {RHAT_MAX}", "min bulk ESS",
                        "divergences",
                        "max |mean error| / sd", "max |sd ratio - 1|", "seconds"],
            "rows": check_rows,
            "note": "With a 2-D latent both references exist; these columns say how far the sampler is from the "
                    "exact answer (Monte Carlo error alone gives about 3 / sqrt(ESS) at most).",
        })

    rows = []
    for r in runs:
        s = r["summary"]
        rows.append([r["name"], s.get("mean_abs_error"), s.get("std_mean_error"), s.get("sd_ratio"),
                     s.get("kl_gauss"), s.get("w2"), s["elbo_q"], s["elbo_local"], s["gap"], s["gap_se"]])
    tables.append({
        "id": "comparison", "title": "q(z|x) versus the reference posterior (means over the diagnosed points)",
        "columns": ["run", "|mean error|", "|mean error| / ref. sd", "sd ratio q / ref.", "KL(q || ref.) Gaussian fits",
                    "W2 per dim", "ELBO amortized q", "ELBO per-point q", "amortization gap", "gap s.e."],
        "rows": rows,
        "note": "Errors of posterior means are averaged over latent dimensions and points; the sd ratio is a "
                "geometric mean (1 is right, below 1 overconfident). KL between Gaussians fitted to the draws "
                "(a dash: q is a point mass); with d latent dimensions and n draws it reads high by roughly "
                "d(d+1)/(4n) nats, so compare runs diagnosed with the same settings. W2: 1-D Wasserstein-2 "
                "distance per latent dimension, from quantiles, no Gaussian assumption. "
                "ELBOs in nats per point; the per-point q is fitted to each point alone with the decoder fixed, so "
                "the gap is what amortization costs.",
    })

    rows = []
    for r in runs:
        sbc = r.get("sbc")
        if not sbc:
            rows.append([r["name"], None, None, None, None, "not run"])
        elif "skipped" in sbc:
            rows.append([r["name"], None, None, None, None, "skipped: " + sbc["skipped"]])
        else:
            verdict = "calibrated" if not sbc["flagged"] else "NOT calibrated: " + ", ".join(sbc["flagged"][:6])
            rows.append([r["name"], sbc["sims"], sbc["draws"], float(np.min(sbc["pvalues"])), len(sbc["flagged"]), verdict])
    tables.append({
        "id": "sbc", "title": "Simulation-based calibration of q(z|x)",
        "columns": ["run", "simulations", "draws per simulation", "min p-value", "dims flagged", "verdict"],
        "rows": rows,
        "note": "z* ~ p(z), x ~ p(x | z*) from the model itself; the rank of z* among draws from q(z|x) is uniform "
                "when q is calibrated. Chi-square test per latent dimension (10 bins); a dimension is flagged "
                "below 0.01 / (number of dimensions).",
    })
    return tables


# ---------------------------------------------------------------------------
# figures


class _Figures:
    def __init__(self, folder: Path):
        self.folder = folder
        self.items: List[dict] = []

    def save(self, fig, name: str, title: str, caption: str, section: str) -> None:
        plt = _plt()
        path = self.folder / f"{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        self.items.append({"file": f"figures/{path.name}", "title": title, "caption": caption, "section": section})


def _arr(v) -> np.ndarray:
    """JSON numbers (None where the value was not finite) -> a float array with NaN."""
    a = np.array(v, dtype=object)
    a[np.equal(a, None)] = np.nan
    return a.astype(float)


def _order_dims(r: dict) -> List[int]:
    """Latent dims, most informative first (largest posterior contraction)."""
    c = np.nan_to_num(_arr(r["contraction"]), nan=-1.0)
    return [int(j) for j in np.argsort(-c, kind="stable")]


def fig_training(figs: _Figures, subjects: Sequence[Subject]) -> None:
    runs = [s for s in subjects if s.run is not None and s.run.history]
    if not runs:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, s in enumerate(runs):
        h = s.run.history
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
    lows = [r["test_elbo"] for s in runs for r in s.run.history if r.get("test_elbo") is not None]
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


def fig_khat(figs: _Figures, results: dict) -> None:
    runs = [r for r in results["runs"] if r["khat"] is not None]
    if not runs:
        return
    plt = _plt()
    b = max(len(r["points"]) for r in runs)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.32 * b + 2), 4))
    ax.axhspan(-1, KHAT_GOOD, color="#2ca02c", alpha=0.07)
    ax.axhspan(KHAT_GOOD, KHAT_BAD, color="#ff7f0e", alpha=0.09)
    ax.axhspan(KHAT_BAD, 10, color="#d62728", alpha=0.07)
    ax.axhline(KHAT_GOOD, color="#ff7f0e", lw=1, ls="--")
    ax.axhline(KHAT_BAD, color="#d62728", lw=1, ls="--")
    n = len(runs)
    allk = []
    for i, r in enumerate(runs):
        k = _arr(r["khat"])
        allk += list(k)
        xs = np.arange(len(k)) + (i - (n - 1) / 2) * min(0.25, 0.8 / n)
        ax.scatter(xs, k, s=28, color=COLORS[i % len(COLORS)], label=r["name"], zorder=3)
        for j in np.argsort(-k)[:3]:
            if k[j] > KHAT_BAD:
                ax.annotate(f"test[{r['points'][j]}]", (xs[j], k[j]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=COLORS[i % len(COLORS)])
    pts = runs[0]["points"]
    if len(pts) <= 40:
        ax.set_xticks(range(len(pts)))
        ax.set_xticklabels([str(p) for p in pts], fontsize=7)
    ax.set_xlabel("point (row of the test data)")
    ax.set_ylabel("PSIS k-hat")
    ax.set_ylim(min(-0.1, min(allk) - 0.05), max(1.1, max(allk) + 0.1))
    ax.set_xlim(-0.7, b - 0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Is q(z|x) a good importance proposal? k-hat per point (lower is better)")
    figs.save(fig, "khat", "PSIS k-hat per point",
              f"Green: k-hat <= {KHAT_GOOD} (q covers the posterior); orange: up to {KHAT_BAD}; red: above {KHAT_BAD} "
              "(q misses posterior mass). The worst points are labelled with their test row.", "khat")


def fig_comparisons(figs: _Figures, results: dict) -> None:
    runs = [r for r in results["runs"] if r["comparison"] is not None]
    if not runs:
        return
    plt = _plt()
    panels = [("std_mean_error", "|mean error| / reference sd", False),
              ("sd_ratio", "sd ratio q / reference", True),
              ("w2", "Wasserstein-2 per latent dim", False),
              ("gap", "amortization gap (nats)", False)]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, (key, label, ratio) in zip(axes, panels):
        data = [_arr(r["local"]["gap"] if key == "gap" else r["comparison"][key]) for r in runs]
        ax.boxplot(data, showfliers=False, widths=0.5)
        for i, d in enumerate(data):
            jit = np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else np.zeros(1)
            ax.scatter(i + 1 + jit, d, s=12, color=COLORS[i % len(COLORS)], alpha=0.8, zorder=3)
        ax.set_xticks(range(1, len(runs) + 1))
        ax.set_xticklabels([r["name"] for r in runs], rotation=20, fontsize=8)
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


def fig_forest(figs: _Figures, diagnosis: Diagnosis) -> None:
    az = arviz()
    plt = _plt()
    runs = [r for r in diagnosis.runs if r.q is not None]
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 5.2), squeeze=False)
    for ax, r in zip(axes[0], runs):
        n = r.numbers
        pts_all = n["points"]
        k = _arr(n["khat"]) if n["khat"] is not None else _arr(n["local"]["gap"])
        order = list(np.argsort(-k))
        pick = []
        for j in [order[0], order[len(order) // 2], 0]:
            if pts_all[j] not in pick:
                pick.append(pts_all[j])
        dims = _order_dims(n)[:2]
        labels = n["latent_labels"]
        site = labels[dims[0]].split("[")[0]  # ArviZ plots one variable (site) at a time
        local_dims = [int(labels[j].split("[")[1].rstrip("]")) for j in dims if labels[j].split("[")[0] == site]
        data, names = [r.q], ["q(z|x)"]
        if r.reference is not None:
            data.append(r.reference)
            names.append("reference (" + n["reference"]["method"] + ")")
        az.plot_forest(data, model_names=names, var_names=[site], combined=True, hdi_prob=0.9,
                       coords={"point": pick, f"{site}_dim": local_dims}, ax=ax, colors=[COLORS[0], REF_COLOR])
        ax.set_title(f"{r.name}: 90% intervals", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "forest", "Forest plot of posterior summaries",
              "Per run, 90% highest-density intervals and medians of q(z|x) and of the reference for three points "
              "(the worst by k-hat, a typical one, the first) and the two most informative latent dimensions. "
              "Labels read z[point, dim]. Each run has its own latent space: compare q with its own reference.",
              "comparison")


def fig_pairs(figs: _Figures, diagnosis: Diagnosis) -> None:
    plt = _plt()
    for ri, r in enumerate(diagnosis.runs):
        n = r.numbers
        if r.q is None:
            continue
        k = _arr(n["khat"]) if n["khat"] is not None else _arr(n["local"]["gap"])
        order = list(np.argsort(-k))
        picks = [order[0]] + ([order[len(order) // 2]] if len(order) > 1 else [])
        dims = _order_dims(n)[: min(3, len(n["latent_labels"]))]
        zq = _draws(r.q, n)
        zr = _draws(r.reference, n) if r.reference is not None else None
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
                        ax.set_xlabel(n["latent_labels"][ic])
                    if c == 0 and a != c:
                        ax.set_ylabel(n["latent_labels"][ia])
            handles = [plt.Line2D([], [], color=COLORS[ri % len(COLORS)], lw=2, label="q(z|x)")]
            if zr is not None:
                handles.append(plt.Line2D([], [], color=REF_COLOR, lw=6, alpha=0.5,
                                          label=f"reference ({n['reference']['method']})"))
            if r.grid is not None and d == 2:
                handles.append(plt.Line2D([], [], color="k", lw=1, label="exact posterior (50/90/99%)"))
            fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
            kh = f", k-hat {n['khat'][j]:.2f}" if n["khat"] is not None else ""
            fig.suptitle(f"{r.name}: test[{n['points'][j]}]{kh}", fontsize=10, x=0.05, ha="left")
            fig.tight_layout()
            which = "worst" if j == picks[0] else "typical"
            figs.save(fig, f"pair_{n['folder']}_{which}", f"{r.name}: posterior of test[{n['points'][j]}] ({which} point)",
                      f"Draws from q(z|x) (colour) over the reference (grey) for the {which} point by "
                      f"{'k-hat' if n['khat'] is not None else 'amortization gap'}, in the "
                      f"{'' if d == len(n['latent_labels']) else 'most informative '}latent dimensions.",
                      "pairs")


def _grid_contours(ax, grid: dict, j: int) -> None:
    """Contours of the exact grid posterior enclosing 50, 90 and 99% of its mass."""
    lp = np.asarray(grid["log_prob"][j], dtype=float)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    flat = np.sort(p.reshape(-1))[::-1]
    cum = np.cumsum(flat)
    levels = sorted({float(flat[min(np.searchsorted(cum, q), len(flat) - 1)]) for q in (0.99, 0.9, 0.5)})
    lo, hi = np.asarray(grid["lo"][j]), np.asarray(grid["hi"][j])
    g = p.shape[0]
    xs = lo[0] + (np.arange(g) + 0.5) * (hi[0] - lo[0]) / g
    ys = lo[1] + (np.arange(g) + 0.5) * (hi[1] - lo[1]) / g
    if len(levels) >= 2:
        ax.contour(xs, ys, p.T, levels=levels, colors="k", linewidths=0.9)


def _draws(data, n: dict) -> np.ndarray:
    """ArviZ posterior -> (chains*draws, points, latent) in the order of ``latent_labels``."""
    post = data["posterior"] if not hasattr(data, "posterior") else data.posterior
    sites = []
    for lab in n["latent_labels"]:
        s = lab.split("[")[0]
        if s not in sites:
            sites.append(s)
    parts = []
    for s in sites:
        v = np.asarray(post[s].values)
        parts.append(v.reshape(v.shape[0] * v.shape[1], v.shape[2], -1))
    return np.concatenate(parts, -1)


def fig_sbc(figs: _Figures, results: dict) -> None:
    runs = [r for r in results["runs"] if r.get("sbc") and "ranks" in r["sbc"]]
    if not runs:
        return
    plt = _plt()
    from scipy.stats import binom

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.3), squeeze=False)
    for i, (ax, r) in enumerate(zip(axes[0], runs)):
        sbc = r["sbc"]
        ranks = np.asarray(sbc["ranks"])
        levels = sbc["draws"] + 1
        bins = 20 if levels % 20 == 0 else 10 if levels % 10 == 0 else min(levels, 10)
        counts = np.bincount(np.minimum(ranks.reshape(-1) * bins // levels, bins - 1), minlength=bins)
        n = ranks.size
        lo, hi = binom.ppf([0.005, 0.995], n, 1 / bins)
        ax.axhspan(lo, hi, color="#999999", alpha=0.3, label="99% band if uniform")
        ax.bar(np.arange(bins), counts, width=0.9, color=COLORS[i % len(COLORS)], alpha=0.85)
        ax.set_xticks([0, bins - 1])
        ax.set_xticklabels(["z* below all draws", "above all"], fontsize=8)
        ax.set_title(f"{r['name']}: min p = {np.min(sbc['pvalues']):.2g}", fontsize=9)
        ax.set_ylabel("count (all latent dims)")
        ax.legend(fontsize=7, loc="lower center")
    fig.suptitle("Simulation-based calibration: rank of the true z among draws from q(z|x)", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "sbc", "Simulation-based calibration ranks",
              "Flat within the grey band: q is calibrated. A U shape means q is too narrow (overconfident), a hump "
              "too wide, a slope biased.", "sbc")


# -- what the models generate ---------------------------------------------------


@torch.no_grad()
def decode_mean(model, z: np.ndarray, x_like: torch.Tensor, layout) -> np.ndarray:
    """Mean of p(x|z) for rows of z: the model's ``decode`` when it has one, else its observed site's mean."""
    zt = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=x_like.device)
    if hasattr(model, "decode") and len(layout.sites) == 1:
        return model.decode(zt).cpu().numpy()
    data, i = {}, 0
    for s, d in zip(layout.sites, layout.sizes):
        data[s] = zt[:, i : i + d].reshape(zt.shape[0], *layout.shapes[s][1:])
        i += d
    xl = x_like[:1].expand(zt.shape[0], *x_like.shape[1:])
    tr = poutine.trace(poutine.condition(model.model, data=data)).get_trace(xl)
    return tr.nodes[model.obs_site]["fn"].mean.reshape(zt.shape[0], -1).cpu().numpy()


def _tile(images: np.ndarray, shape, ncols: int) -> np.ndarray:
    from ..plots import image_grid

    return image_grid(np.asarray(images, dtype=np.float32), shape, ncols)


def _x_of(s: Subject) -> torch.Tensor:
    """The subject's points on its model's device."""
    return torch.as_tensor(s.x, dtype=torch.float32).to(model_device(s.model))


def _layout_of(s: Subject):
    x = _x_of(s)[:2]
    with isolated_rng(0, x.device):
        return _layout(s.model, x)


def fig_generated(figs: _Figures, diagnosis: Diagnosis, subjects: Sequence[Subject]) -> None:
    by_name = {s.name: s for s in subjects}
    pairs = [(r, by_name[r.name]) for r in diagnosis.runs if r.name in by_name]
    if not pairs:
        return
    plt = _plt()
    shape = next((s.data.image_shape for _, s in pairs if s.data is not None and s.data.image_shape), None)
    layouts = {r.name: _layout_of(s) for r, s in pairs}
    x0 = pairs[0][1].x
    same_points = all(s.x.shape == x0.shape and torch.equal(s.x, x0) for _, s in pairs)
    nshow = min(12, x0.shape[0])

    # reconstructions: decoder mean at the mean of q(z|x), for the diagnosed points
    if same_points:
        recon = [decode_mean(s.model, _arr(r.numbers["q"]["mean"])[:nshow], _x_of(s), layouts[r.name]) for r, s in pairs]
        if shape is not None:
            rows = [x0[:nshow].cpu().numpy()] + recon
            fig, axes = plt.subplots(len(rows), 1, figsize=(0.75 * nshow + 1.6, 0.85 * len(rows) + 0.4), squeeze=False)
            for ax, img, label in zip(axes[:, 0], rows, ["data"] + [r.name for r, _ in pairs]):
                ax.imshow(_tile(img, shape, nshow), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        else:
            k = min(3, nshow)
            fig, axes = plt.subplots(k, 1, figsize=(8, 1.9 * k), sharex=True, squeeze=False)
            for i in range(k):
                ax = axes[i, 0]
                ax.plot(x0[i].cpu().numpy(), "k.-", lw=1, label="data")
                for ci, ((r, _), rec) in enumerate(zip(pairs, recon)):
                    ax.plot(rec[i], ".-", lw=1, color=COLORS[ci % len(COLORS)], label=r.name)
                ax.set_ylabel(f"test[{diagnosis.runs[0].numbers['points'][i]}]", fontsize=8)
            axes[0, 0].legend(fontsize=7, loc="upper right")
            axes[-1, 0].set_xlabel("data dimension")
        fig.suptitle("Reconstructions: mean of p(x|z) at the mean of q(z|x)", fontsize=10)
        fig.tight_layout()
        figs.save(fig, "reconstructions", "Reconstructions", "Top row: the diagnosed test points; below, each run's "
                  "decoder mean at the mean of its q(z|x).", "generated")

    # samples from the prior
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.4 * len(pairs), 3.6), squeeze=False)
    for ci, (ax, (r, s)) in enumerate(zip(axes[0], pairs)):
        lay = layouts[r.name]
        from ..diagnostics.draws import draw_prior

        xd = _x_of(s)
        with isolated_rng(diagnosis.settings.seed + 3, xd.device):
            zp = draw_prior(s.model, xd, 64, lay)[:, 0].cpu().numpy()
        xs = decode_mean(s.model, zp, xd, lay)
        if shape is not None:
            ax.imshow(_tile(xs, shape, 8), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
        else:
            ax.plot(xs[:8].T, alpha=0.7)
            ax.set_xlabel("data dimension")
        ax.set_title(r.name, fontsize=9)
    fig.suptitle("Samples: mean of p(x|z), z ~ p(z)", fontsize=10)
    fig.tight_layout()
    figs.save(fig, "samples", "Samples from the prior", "Decoder means of 64 draws z ~ p(z) per run (the same seed "
              "for every run).", "generated")

    # latent traversals
    for ci, (r, s) in enumerate(pairs):
        n = r.numbers
        lay = layouts[r.name]
        dims = _order_dims(n)[: min(6, len(n["latent_labels"]))]
        steps = np.linspace(-2.5, 2.5, 9)
        base = _arr(n["q"]["mean"])[0]
        psd = _arr(n["prior_sd"])
        zs = []
        for j in dims:
            for t in steps:
                z = base.copy()
                z[j] = t * psd[j]
                zs.append(z)
        xs = decode_mean(s.model, np.stack(zs), _x_of(s), lay)
        if shape is not None:
            fig, ax = plt.subplots(figsize=(0.72 * len(steps) + 1.8, 0.75 * len(dims) + 0.9))
            ax.imshow(_tile(xs, shape, len(steps)), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            h = shape[0] + 1
            ax.set_yticks([i * h + shape[0] / 2 for i in range(len(dims))])
            ax.set_yticklabels([n["latent_labels"][j] for j in dims], fontsize=8)
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
                axes[a, 0].set_ylabel(n["latent_labels"][j], fontsize=8)
            axes[-1, 0].set_xlabel("data dimension (colour: -2.5 to +2.5 prior sd)")
        ax0 = fig.axes[0]
        ax0.set_title(f"{r.name}: latent traversals from the encoding of test[{n['points'][0]}]", fontsize=10)
        fig.tight_layout()
        figs.save(fig, f"traversal_{n['folder']}", f"{r.name}: latent traversals",
                  "Each row moves one latent dimension (most informative first) from -2.5 to +2.5 prior standard "
                  "deviations, the others held at the mean of q(z|x) for the first diagnosed point.", "generated")


# ---------------------------------------------------------------------------
# the report


SECTIONS = [
    ("runs", "Runs"),
    ("khat", "Is q(z|x) a good posterior? Pareto k-hat per point"),
    ("reference", "Reference posterior"),
    ("comparison", "q(z|x) against the reference"),
    ("pairs", "Posteriors of single points"),
    ("sbc", "Calibration"),
    ("generated", "What the models generate"),
]
TABLE_SECTION = {"runs": "runs", "khat": "khat", "worst": "khat", "reference": "reference", "nuts_check": "reference",
                 "comparison": "comparison", "sbc": "sbc"}

GLOSSARY = [
    ("PSIS k-hat", "the estimated Pareto tail shape of the importance weights p(x, z) / q(z|x); it says how heavy the "
     "tail of the weights is, i.e. how much posterior mass q misses. Computed per point (ArviZ psislw)."),
    ("reference posterior", "p(z | x) for the run's own decoder, which is held fixed: NUTS draws, or the exact "
     "posterior on a grid for a 2-D latent."),
    ("R-hat / ESS", "agreement between the NUTS chains (1 when they agree) and the number of effectively independent "
     "draws, per point and latent dimension (ArviZ rank-normalized versions)."),
    ("amortization gap", "ELBO of a q fitted to one point alone minus ELBO of the amortized q(z|x): what sharing one "
     "encoder across all points costs."),
    ("SBC", "simulation-based calibration: simulate z* ~ p(z), x ~ p(x|z*) and rank z* among draws from q(z|x)."),
]


def write_report(diagnosis: Diagnosis, subjects: Optional[Sequence[Subject]], out_dir, *,
                 log: Optional[Callable[[str], None]] = None) -> Dict[str, Path]:
    """Write ``index.html``, ``report.md``, ``results.json`` and ``figures/*.png`` into ``out_dir``."""
    from ..rundir.files import write_text_atomic

    log = log or (lambda msg: None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PyroVAEError(f"--out {out}: is a file; choose a folder")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for old in (out / "figures").glob("*.png"):
        old.unlink()  # figures of an earlier report here must not linger beside the new ones
    results = to_plain(diagnosis.to_json())
    tables = build_tables(results)
    figs = _Figures(out / "figures")
    log(f"writing figures to {out / 'figures'}")
    if subjects:
        fig_training(figs, subjects)
    fig_khat(figs, results)
    fig_comparisons(figs, results)
    fig_forest(figs, diagnosis)
    fig_pairs(figs, diagnosis)
    fig_sbc(figs, results)
    if subjects:
        fig_generated(figs, diagnosis, subjects)
    results["format_report"] = RESULTS_FORMAT
    results["tables"] = tables
    results["figures"] = figs.items
    paths = {"json": out / "results.json", "html": out / "index.html", "md": out / "report.md"}
    write_text_atomic(paths["json"], json.dumps(results, indent=1) + "\n")
    write_text_atomic(paths["html"], render_html(results, out))
    write_text_atomic(paths["md"], render_markdown(results))
    return paths


def _title(results: dict) -> str:
    names = [r["name"] for r in results["runs"]]
    return "Posterior diagnostics: " + (" vs ".join(names) if len(names) <= 4 else f"{len(names)} runs")


def _settings_line(results: dict) -> str:
    s = results["settings"]
    ref = {"nuts": f"NUTS ({s['nuts_chains']} chains x {s['nuts_samples']} draws after {s['nuts_warmup']} warmup; "
                   "exact grid for 2-D latents)", "grid": "exact grid", "none": "none"}[s["reference"]]
    return (f"{s['points']} test points per run; {s['draws']} draws from q per point; reference: {ref}; "
            f"per-point q: {s['local_steps']} Adam steps; SBC: {s['sbc_sims']} simulations x {s['sbc_draws']} draws; "
            f"seed {s['seed']}.")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0 .3em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}td.text{text-align:left}
.note{color:#555;font-size:.88em;max-width:60em}.meta{color:#666;font-size:.9em}
.warnings{background:#fff4e5;border:1px solid #f0a040;border-left:6px solid #e07000;padding:.6em 1em;margin:1em 0}
.warnings li{margin:.3em 0}.ok{background:#eef8ee;border:1px solid #8c8;padding:.5em 1em}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85em;color:#444;max-width:60em}
code{background:#f5f5f5;padding:0 .2em}
"""


def render_html(results: dict, out: Path) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{e(_title(results))}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>{e(_title(results))}</h1>")
    parts.append(f"<p class=\"meta\">Created {e(results.get('created', ''))} by pyro_vae. {e(_settings_line(results))} "
                 "Every number in the tables is in <code>results.json</code>; draws are in the netCDF files beside it.</p>")
    if results["warnings"]:
        parts.append("<div class=\"warnings\" id=\"warnings\"><strong>Warnings</strong><ul>")
        parts += [f"<li>{e(w)}</li>" for w in results["warnings"]]
        parts.append("</ul></div>")
    else:
        parts.append("<p class=\"ok\" id=\"warnings\">No warnings: every check passed.</p>")
    for sec, title in SECTIONS:
        body = []
        for t in results["tables"]:
            if TABLE_SECTION.get(t["id"]) == sec:
                body.append(_html_table(t))
        for f in results["figures"]:
            if f["section"] == sec:
                data = base64.b64encode((out / f["file"]).read_bytes()).decode("ascii")
                body.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{e(f['title'])}\" "
                            f"data-file=\"{e(f['file'])}\"><figcaption><strong>{e(f['title'])}.</strong> "
                            f"{e(f['caption'])}</figcaption></figure>")
        if body:
            parts.append(f"<h2 id=\"{sec}\">{e(title)}</h2>")
            parts += body
    parts.append("<h2 id=\"glossary\">How to read this report</h2><dl>")
    for term, text in GLOSSARY:
        parts.append(f"<dt><strong>{e(term)}</strong></dt><dd>{e(text)}</dd>")
    parts.append("</dl>")
    files = ["results.json", "report.md", "diagnostics.json"] + [
        f"{r['folder']}/{n}.nc" for r in results["runs"] for n in ("q", "reference", "nuts")
        if (out / r["folder"] / f"{n}.nc").exists()]
    parts.append("<h2 id=\"files\">Files</h2><ul>" + "".join(f"<li><code>{e(f)}</code></li>" for f in files) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_table(t: dict) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in t["columns"])
    rows = []
    for row in t["rows"]:
        cells = []
        for v in row:
            cls = " class=\"text\"" if isinstance(v, str) else ""
            cells.append(f"<td{cls}>{e(fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h3>{e(t['title'])}</h3><table id=\"table-{e(t['id'])}\" data-table=\"{e(t['id'])}\"><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table><p class=\"note\">{e(t['note'])}</p>")


def render_markdown(results: dict) -> str:
    lines = [f"# {_title(results)}", "", f"Created {results.get('created', '')} by pyro_vae. {_settings_line(results)}",
             "Every number in the tables is in `results.json`.", ""]
    if results["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in results["warnings"]] + [""]
    else:
        lines += ["No warnings: every check passed.", ""]
    for sec, title in SECTIONS:
        body = []
        for t in results["tables"]:
            if TABLE_SECTION.get(t["id"]) == sec:
                body += [f"### {t['title']}", "", "| " + " | ".join(t["columns"]) + " |",
                         "|" + "|".join("---" for _ in t["columns"]) + "|"]
                body += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in t["rows"]]
                body += ["", t["note"], ""]
        for f in results["figures"]:
            if f["section"] == sec:
                body += [f"![{f['title']}]({f['file']})", "", f"*{f['title']}.* {f['caption']}", ""]
        if body:
            lines += [f"## {title}", ""] + body
    lines += ["## How to read this report", ""] + [f"- **{t}**: {d}" for t, d in GLOSSARY] + [""]
    return "\n".join(lines)


def render_text(results: dict, table_ids: Sequence[str] = ("khat", "reference", "nuts_check", "comparison", "sbc")) -> str:
    """The main tables and the warnings as plain text, for the terminal."""
    lines = []
    tables = results.get("tables") or build_tables(results)
    for t in tables:
        if t["id"] not in table_ids or not t["rows"]:
            continue
        cells = [t["columns"]] + [[fmt(v) for v in row] for row in t["rows"]]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(t["columns"]))]
        lines.append(t["title"])
        for j, r in enumerate(cells):
            lines.append("  " + "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
            if j == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        lines.append("")
    if results["warnings"]:
        lines.append("warnings:")
        lines += [f"  - {w}" for w in results["warnings"]]
    else:
        lines.append("no warnings")
    return "\n".join(lines)
