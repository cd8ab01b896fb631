"""A run's figures: loss curve, reconstructions, samples, the latent space and the model's graph, one PNG each.

Each is drawn in the house style (figures/style.py) and written through the
run directory's atomic writer.  A graph model has no ``encode``/``decode``:
its figures (:func:`graph_plots`) are drawn from its program, as decoder
means of prior draws, and from its class metrics (evaluation/classes.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from pyro import poutine

from ..diagnostics.structure import graph_data, model_structure
from ..errors import PyroVAEError
from ..infer.sites import cycle_rows
from ..models.sampling import given_rows, prior_predictive
from . import sequences
from .graph import draw_structure
from .style import INK, figure_style, image_grid, pyplot, save_figure, save_image_grid

#: the most classes latent_scatter names in a legend (more get a colour bar)
MAX_LEGEND_CLASSES = 20


@figure_style()
def loss_curve(history: Sequence[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [np.nan if h["train_loss"] is None else -h["train_loss"] for h in history], label="train ELBO (minibatch estimate)")
    test = [(h["epoch"], h["test_elbo"]) for h in history if h.get("test_elbo") is not None]
    if test:
        ax.plot(*zip(*test), "o-", label="test ELBO")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.25 on a short run's axis
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per data point (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def reconstructions(model, x: torch.Tensor, image_shape, path: Path, n: int = 10) -> Path:
    x = x[:n]
    recon = model.decode(model.encode(x)).cpu().numpy()
    x = x.cpu().numpy()
    if image_shape is not None:
        both = np.concatenate([x, recon], 0)
        return save_image_grid(both, image_shape, path, ncols=len(x), title="top: data, bottom: reconstruction")
    plt = pyplot()
    k = min(4, len(x))
    fig, axes = plt.subplots(k, 1, figsize=(7, 1.6 * k), sharex=True, squeeze=False)
    for i in range(k):
        axes[i, 0].plot(x[i], ".-", label="data")
        axes[i, 0].plot(recon[i], ".-", label="reconstruction")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("data dimension")
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def samples(model, image_shape, path: Path, n: int = 64, seed: int = 0) -> Path:
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        _, xs = model.sample(n)
    xs = xs.cpu().numpy()
    if image_shape is not None:
        return save_image_grid(xs, image_shape, path, ncols=int(math.ceil(math.sqrt(n))), title="samples: mean of p(x|z), z ~ p(z)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(xs[: min(8, n)].T, alpha=0.7)
    ax.set_xlabel("data dimension")
    ax.set_title("samples: mean of p(x|z), z ~ p(z)")
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def latent_scatter(model, x: torch.Tensor, labels: Optional[torch.Tensor], path: Path,
                   class_names: Optional[Sequence[str]] = None) -> Path:
    """The 2-D latent itself, else the first two principal components of the encoder means.

    Points are coloured by ``labels``; with ``class_names`` (name of label 0, 1, ...) the legend names the classes.
    """
    plt = pyplot()
    z = model.encode(x).cpu().double()
    if z.shape[1] == 1:
        z = torch.cat([z, torch.zeros_like(z)], 1)
        axes_label = ("z", "")
    elif z.shape[1] == 2:
        axes_label = ("z[0]", "z[1]")
    else:
        zc = z - z.mean(0)
        _, s, v = torch.linalg.svd(zc, full_matrices=False)
        z = zc @ v[:2].T
        var = (s**2) / (s**2).sum()
        axes_label = (f"PC1 of E[z|x] ({var[0]:.0%} var.)", f"PC2 ({var[1]:.0%} var.)")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    c = labels.cpu().numpy() if labels is not None else None
    levels = np.unique(c) if c is not None else np.array([])
    if c is None:
        ax.scatter(z[:, 0], z[:, 1], s=8, alpha=0.8)
    elif class_names is not None or len(levels) <= MAX_LEGEND_CLASSES:
        cmap = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")
        for i, level in enumerate(levels):
            k = int(level)
            name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(level)
            keep = c == level
            ax.scatter(z[keep, 0], z[keep, 1], s=8, alpha=0.8, color=cmap(i % cmap.N), label=name)
        # outside the axes: ten names would hide the points they label
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=2, frameon=False)
    else:  # too many classes to name one by one
        sc = ax.scatter(z[:, 0], z[:, 1], c=c, s=8, cmap="viridis", alpha=0.8)
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(axes_label[0])
    ax.set_ylabel(axes_label[1])
    ax.set_title("latent space (encoder means, test data)")
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")


@figure_style()
def _drawn(figure, *args) -> List[Path]:
    """[the figure's file], or [] where the program cannot be traced on these rows: a drawing never stops a run.

    Only the tracing is forgiven: a file that cannot be written (a full disk) stops the run in one line, as
    every other figure's does, instead of going missing without a word."""
    try:
        return [figure(*args)]
    except FigureWriteError:
        raise
    except PyroVAEError:
        return []


class FigureWriteError(PyroVAEError):
    """A figure drawn but not written (the writer's one line): never forgiven as a program that cannot be traced."""


def graph(model, data, path: Path, title: str = "the model's graph") -> Path:
    """The model's graph (diagnostics/structure.py) traced on ``data``, drawn as the report draws it."""
    fig = draw_structure(model_structure(model, data), title)
    try:
        return save_figure(fig, path, bbox_inches="tight")
    except PyroVAEError as e:
        raise FigureWriteError(str(e)) from None


def run_plots(model, data, history, folder: Path) -> List[Path]:
    """A built-in model's figures."""
    folder.mkdir(parents=True, exist_ok=True)
    x = data.test_x
    return [
        loss_curve(history, folder / "loss.png"),
        reconstructions(model, x, data.image_shape, folder / "reconstructions.png"),
        samples(model, data.image_shape, folder / "samples.png"),
        latent_scatter(model, x[:2000], None if data.test_labels is None else data.test_labels[:2000], folder / "latent.png",
                       class_names=data.class_names),
        *_drawn(graph, model, graph_data(data), folder / "graph.png"),
    ]


def program_plots(model, data, history, folder: Path) -> List[Path]:
    """A program's figures: its curve and its graph (the others need a built-in's encoder and decoder)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [loss_curve(history, folder / "loss.png"), *_drawn(graph, model, graph_data(data), folder / "graph.png")]


# -- graph models: what they generate, and how their classes agree with the labels -------------------------

#: the most classes a class-conditional grid shows (one row each)
MAX_CLASS_ROWS = 20
#: the largest table whose cells are written as numbers
MAX_ANNOTATED_CELLS = 400
#: the most tick labels a side of a class table has
MAX_TICKS = 40


def conditioning_node(model) -> Optional[str]:
    """The categorical data node a graph's samples can be drawn per class of: a partial label, else an input label."""
    g = model.graph
    for role in ("partial", "input"):
        for n in g.order:
            if g.nodes[n].role == role and g.nodes[n].family == "categorical":
                return n
    return None


def _is_image(data, image_shape) -> bool:
    return image_shape is not None and image_shape[0] * image_shape[1] == data.dim


@figure_style()
def class_samples(model, data, node: str, image_shape, path: Path, draws: int = 8, seed: int = 0,
                  class_names: Optional[Sequence[str]] = None) -> Path:
    """One row per class of ``node``: the mean of p(x | node = class, the latents drawn from their prior).

    ``data``: the run's named data, whose array ``node`` the given classes are shaped like.  Every row draws
    its latents with the same seed, so a column holds the latents fixed where the program draws them alike.
    """
    plt = pyplot()
    k = int(model.graph.nodes[node].dim)
    shown = min(k, MAX_CLASS_ROWS)
    width = int(np.prod(image_shape))
    means = [prior_predictive(model, draws, width, seed, observed=model.obs_site, mean=True,
                              given=given_rows(data, model.obs_site, {node: c}, draws)).cpu().numpy()
             for c in range(shown)]
    h, w = image_shape
    grid = image_grid(np.concatenate(means, 0), image_shape, ncols=draws)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * draws + 1.0), max(3.0, 0.45 * shown + 0.8)))
    ax.imshow(grid, vmin=0, vmax=1)
    ax.set_xticks([])
    names = [class_names[c] if class_names is not None and c < len(class_names) else str(c) for c in range(shown)]
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(shown)], names)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel(node)
    more = f" (first {shown} of {k} classes)" if shown < k else ""
    ax.set_title(f"mean of p({model.obs_site} | {node}, latents ~ prior){more}")
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def prior_samples(model, data, image_shape, path: Path, n: int = 64, seed: int = 0) -> Path:
    """Ancestral samples of a graph: every latent drawn from its prior, then the mean of p(x | them).

    A graph with input nodes (always-given arrays) takes them from the test data's rows in turn.
    """
    inputs = [name for name in model.graph.order if model.graph.nodes[name].role == "input"]
    given = cycle_rows({name: data[name] for name in inputs}, n) if inputs else None
    xs = prior_predictive(model, n, int(np.prod(image_shape)), seed, observed=model.obs_site,
                          given=given, mean=True).cpu().numpy()
    title = f"samples: mean of p({model.obs_site} | latents), latents ~ prior"
    if inputs:
        title += f"; {', '.join(inputs)} from the test data"
    return save_image_grid(xs, image_shape, path, ncols=int(math.ceil(math.sqrt(n))), title=title)


@figure_style()
def class_table(metrics, path: Path) -> Path:
    """A :class:`~pyro_vae.evaluation.classes.ClassMetrics` table as a heatmap with its counts: the confusion
    matrix of a classifier, or the contingency table of a clustering (its clusters in the order of their classes)."""
    plt = pyplot()
    table = np.asarray(metrics.table)
    cols = np.arange(table.shape[1])
    if metrics.kind == "clustering":
        matched = np.asarray(metrics.cluster_class)
        # matched clusters first, in the order of their classes, so that agreement shows as a diagonal
        cols = np.array(sorted(cols, key=lambda j: (matched[j] < 0, matched[j], j)))
        table = table[:, cols]
    rows, ncols = table.shape
    fig, ax = plt.subplots(figsize=(min(14.0, max(4.0, 0.45 * ncols + 2.0)), min(14.0, max(3.5, 0.45 * rows + 1.5))))
    im = ax.imshow(table, cmap="Blues", aspect="auto", vmin=0)
    fig.colorbar(im, ax=ax, label="points")
    if table.size <= MAX_ANNOTATED_CELLS:
        top = table.max() if table.size else 0
        for i in range(rows):
            for j in range(ncols):
                ax.text(j, i, str(int(table[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if top and table[i, j] > top / 2 else INK)
    names = metrics.class_names

    def name(i):
        return names[i] if names and i < len(names) else str(i)

    # at most MAX_TICKS labels a side: a hundred clusters' numbers would overprint each other
    ys, xs = range(0, rows, math.ceil(rows / MAX_TICKS)), range(0, ncols, math.ceil(ncols / MAX_TICKS))
    ax.set_yticks(list(ys), [name(i) for i in ys])
    ax.set_ylabel("true class")
    if metrics.kind == "classifier":
        ax.set_xticks(list(xs), [name(int(cols[j])) for j in xs])
        ax.set_xlabel(f"predicted {metrics.node} (argmax q)")
        ax.set_title(f"{metrics.node}: accuracy {metrics.accuracy:.3f} ± {metrics.accuracy_se:.3f} "
                     f"on {metrics.num_points} points")
    else:
        ax.set_xticks(list(xs), [str(int(cols[j])) for j in xs])
        ax.set_xlabel(f"cluster ({metrics.node})")
        ax.set_title(f"{metrics.node}: clustering accuracy {metrics.accuracy:.3f} ({metrics.matching} matching), "
                     f"{metrics.clusters_used} of {metrics.num_clusters} clusters used")
    fig.tight_layout()
    return save_figure(fig, path)


def class_table_file(metrics) -> str:
    """The file name of a class table: a classifier's confusion matrix, or a clustering's contingency table."""
    return "confusion.png" if metrics.kind == "classifier" else "contingency.png"


def graph_plots(model, data, history, folder: Path, classes=None) -> List[Path]:
    """A graph model's figures: a program's (:func:`program_plots`); for image data its ancestral samples and,
    with a partial or input label, its samples per class; the table of ``classes`` (a ClassMetrics) if any."""
    out = program_plots(model, data, history, folder)
    if _is_image(data, data.image_shape):
        out.append(prior_samples(model, data.test, data.image_shape, folder / "samples.png"))
        node = conditioning_node(model)
        if node is not None:
            # the data's class names name its labels: they name the node's classes when its array is the labels
            labels = data.test_labels
            same = labels is not None and torch.equal(data.test[node].cpu(), labels.cpu())
            out.append(class_samples(model, data.test, node, data.image_shape, folder / "class_samples.png",
                                     class_names=data.class_names if same else None))
    if classes is not None:
        out.append(class_table(classes, folder / class_table_file(classes)))
    return out


# -- models over time ---------------------------------------------------------------------------------------------

#: q's draws per sequence behind the fit figure's bands
FIT_DRAWS = 64


@torch.no_grad()
def sequence_plots(model, data, history, folder: Path, metrics: Optional[dict] = None) -> List[Path]:
    """A chain's figures: a program's (:func:`program_plots`), the per-step profile of the ELBO's terms, and a few
    test sequences observed against reconstructed, with q's latent trajectories."""
    out = program_plots(model, data, history, folder)
    if metrics and metrics.get("steps"):
        out.append(sequences.save_step_profile(metrics["steps"], folder / "steps.png"))
    test = data.test
    m = min(3, int(next(iter(test.values())).shape[0]))
    rows = {k: v[:m] for k, v in test.items()}
    rep = {k: v.repeat_interleave(FIT_DRAWS, 0) for k, v in rows.items()}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tr = poutine.trace(model.guide).get_trace(**rep)
    steps = int(rows[model.obs_site].shape[1])
    z = torch.stack([tr.nodes[f"{model.chain}_{t}"]["value"] for t in range(1, steps + 1)], -2)
    feats = {model.chain: z, **{u: rep[u] for u in getattr(model, "inputs", ())}}
    recon = model.likelihood.mean(model.emitters[model.obs_site](feats))
    lengths = rows.get("lengths")
    lengths = np.full(m, steps) if lengths is None else lengths.cpu().numpy()
    shape = lambda t: t.reshape(m, FIT_DRAWS, *t.shape[1:]).transpose(0, 1).cpu().numpy()  # noqa: E731
    out.append(sequences.save_sequence_fit(rows[model.obs_site].cpu().numpy(), lengths, shape(recon), shape(z),
                                           folder / "sequence_fit.png"))
    return out
