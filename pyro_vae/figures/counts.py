"""A count run's figures: per-feature mean against variance, and zero fractions, observed and posterior-predictive.

A run on a synthetic source adds its recovery: learned parameters against the truth they were drawn with.

Counts are not images: a row of gene or word counts has no picture to show, and what a count likelihood gets
right or wrong is how each feature's variance grows with its mean (Poisson: equal; negative binomial: more)
and how many zeros it has.  The posterior-predictive draws are x ~ p(x | z), z ~ q(z | x), on the test rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import torch
from pyro import poutine

from ..data import batch
from ..diagnostics.structure import graph_data
from ..infer.data_name import named_data
from ..infer.modules import eval_mode
from ..infer.rng import isolated_rng
from ..models.params import model_params
from ..errors import PyroVAEError
from .run import FigureWriteError, graph, latent_scatter, loss_curve
from .style import figure_style, log_axes, pyplot, save_figure

#: the most test rows the posterior-predictive figures draw for
MAX_ROWS = 2000


@torch.no_grad()
def posterior_predictive(model, data, seed: int = 0) -> torch.Tensor:
    """One draw x ~ p(x | z), z ~ q(z | x) per row of ``data`` (a tensor or named arrays), of the observed site."""
    data = named_data(model, data)
    with model_params(model), eval_mode(model), isolated_rng(seed, batch.reference(data).device):
        guide = poutine.trace(model.guide).get_trace(**data)
        program = poutine.replay(poutine.uncondition(model.model), trace=guide)
        tr = poutine.trace(program).get_trace(**data)
    return tr.nodes[model.obs_site]["value"].detach()


def _moments(x: np.ndarray):
    return x.mean(0), x.var(0), (x == 0).mean(0)


@figure_style()
def mean_variance(observed: np.ndarray, predicted: np.ndarray, path: Path) -> Path:
    """Each feature's variance against its mean, log-log: the data's and the model's, with the Poisson line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for x, label, marker in ((observed, "data", "o"), (predicted, "posterior predictive", "x")):
        m, v, _ = _moments(x)
        keep = (m > 0) & (v > 0)
        ax.scatter(m[keep], v[keep], s=12, marker=marker, alpha=0.7, label=label)
    m = _moments(observed)[0]
    lo, hi = max(float(m[m > 0].min()) if (m > 0).any() else 1e-3, 1e-3), max(float(m.max()), 1e-2)
    line = np.geomspace(lo, hi, 50)
    ax.plot(line, line, "k--", lw=1, label="variance = mean (Poisson)")
    log_axes(ax)
    ax.set_xlabel("mean count per feature")
    ax.set_ylabel("variance per feature")
    ax.set_title("mean-variance per feature (test rows)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def zero_fraction(observed: np.ndarray, predicted: np.ndarray, path: Path) -> Path:
    """Each feature's share of zero counts: the data's against the model's posterior-predictive draws."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    a, b = _moments(observed)[2], _moments(predicted)[2]
    ax.scatter(a, b, s=12, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="equal")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("observed zero fraction per feature")
    ax.set_ylabel("posterior-predictive zero fraction")
    ax.set_title("zeros per feature (test rows)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def recovery_figure(recovered, path: Path) -> Path:
    """:func:`draw_recovery`, saved as a PNG."""
    return save_figure(draw_recovery(recovered), path)


def draw_recovery(recovered):
    """A synthetic run's learned parameters against the truth: inverse dispersion per feature (log-log), dropout per
    feature, and each true topic's cosine with each learned one, one panel each where the run has it
    (``recovered``: an evaluation/recovery.py ``Recovery``).  The figure, unsaved: the caller draws it inside the
    house style and saves it."""
    plt = pyplot()
    panels = [p for p in ("theta", "dropout", "topics") if getattr(recovered, p) is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, name in zip(axes[0], panels):
        r = getattr(recovered, name)
        if name == "topics":
            cos = np.asarray(r.cosine)
            order = [c for c in r.matched if c >= 0]
            order += [c for c in range(cos.shape[1]) if c not in order]
            im = ax.imshow(cos[:, order], vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(order)), [str(c) for c in order])
            ax.set_yticks(range(cos.shape[0]), [str(k) for k in range(cos.shape[0])])
            ax.set_xlabel("learned topic (matched order)")
            ax.set_ylabel("true topic")
            ax.set_title(f"topic-word cosine (matched mean {r.matched_mean:.3f})")
            fig.colorbar(im, ax=ax, fraction=0.046)
            continue
        true, learned = np.asarray(r.true), np.asarray(r.learned)
        ax.scatter(true, learned, s=12, alpha=0.7)
        err = "" if r.median_relative_error is None else f"median relative error {r.median_relative_error:.1%}"
        if name == "theta":
            keep = (true > 0) & (learned > 0)
            lo = float(min(true[keep].min(), learned[keep].min())) if keep.any() else 0.1
            hi = float(max(true[keep].max(), learned[keep].max())) if keep.any() else 10.0
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="learned = true")
            log_axes(ax)
            ax.set_xlabel("true inverse dispersion theta per feature")
            ax.set_ylabel("learned theta")
            ax.set_title(f"inverse dispersion: {err}")
        else:
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="learned = true")
            top = float(max(true.max(), learned.max(), 0.05)) * 1.05
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_xlabel("true dropout probability per feature")
            ax.set_ylabel("learned dropout (mean over q)")
            ax.set_title(f"dropout: {err}")
        ax.legend()
    fig.tight_layout()
    return fig


def count_plots(model, data, history, folder: Path) -> List[Path]:
    """A count model's figures: the loss curve, mean-variance and zero fractions per feature, the latent space of a
    one-latent model, and the model's graph."""
    folder.mkdir(parents=True, exist_ok=True)
    test = named_data(model, data.test)  # the test rows as the model takes them (one array, named)
    n = min(MAX_ROWS, batch.num_rows(test))
    rows = batch.rows(test, torch.arange(n))
    predicted = posterior_predictive(model, rows).cpu().numpy()
    observed = data.test_x[:n].cpu().numpy()
    out = [loss_curve(history, folder / "loss.png"),
           mean_variance(observed, predicted, folder / "mean_variance.png"),
           zero_fraction(observed, predicted, folder / "zero_fraction.png")]
    if getattr(model, "one_latent", None):
        x = data.test_x[:n]
        labels = None if data.test_labels is None else data.test_labels[:n]
        out.append(latent_scatter(model, x, labels, folder / "latent.png", class_names=data.class_names))
    try:
        out.append(graph(model, graph_data(data), folder / "graph.png"))
    except FigureWriteError:
        raise
    except PyroVAEError:
        pass  # a graph that cannot be traced on these rows is left out: a drawing never stops a run
    return out
