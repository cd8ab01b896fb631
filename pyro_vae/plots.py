"""A run's figures: loss curve, reconstructions, samples, the latent space and the model's graph, one PNG each.

Matplotlib with the Agg backend (no display needed); every PNG goes through
the run directory's atomic writer.  Every figure of the library (these and the
report's) is drawn inside :func:`figure_style`: dark ink on white, images in
``gray_r``, one font and one colour cycle, whatever the caller's settings are.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch

from .rundir.files import write_atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
INK = "#222222"
MAX_LEGEND_CLASSES = 20
STYLE = {
    "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
    "savefig.edgecolor": "white", "savefig.transparent": False,
    "text.color": INK, "axes.labelcolor": INK, "axes.titlecolor": INK, "axes.edgecolor": INK,
    "xtick.color": INK, "ytick.color": INK, "grid.color": "#b0b0b0",
    "legend.facecolor": "white", "legend.edgecolor": "#cccccc", "legend.framealpha": 0.9,
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 10, "axes.titlesize": 10,
    "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 10,
    "image.cmap": "gray_r", "image.interpolation": "nearest", "boxplot.medianprops.color": "#ff7f0e",
}


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The one style of every figure, from matplotlib's defaults up, so a caller's dark theme cannot leak in.

    Also a decorator (``@figure_style()``); the caller's settings come back on exit.
    """
    plt = _plt()
    from cycler import cycler

    with plt.style.context(STYLE | {"axes.prop_cycle": cycler(color=COLORS)}, after_reset=True):
        yield


def save_figure(fig, path: Path, **savefig_kwargs) -> Path:
    """Write ``fig`` as a PNG through the run directory's atomic writer, then free it."""
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, **savefig_kwargs))
    finally:
        _plt().close(fig)
    return Path(path)


def image_grid(images: np.ndarray, shape, ncols: int) -> np.ndarray:
    """Tile (n, H*W) rows into one (rows*H, ncols*W) array with 1-pixel gaps."""
    h, w = shape
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    lo, hi = float(images.min()), float(images.max())
    span = hi - lo if hi > lo else 1.0
    # gaps take the background value, which the gray_r colormap shows as white
    grid = np.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1), lo, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i].reshape(h, w)
    return (grid - lo) / span


@figure_style()
def save_image_grid(images: np.ndarray, shape, path: Path, ncols: int = 10, title: Optional[str] = None) -> Path:
    plt = _plt()
    grid = image_grid(np.asarray(images, dtype=np.float32), shape, ncols)
    fig, ax = plt.subplots(figsize=(max(3, grid.shape[1] / 12), max(3, grid.shape[0] / 12) + (0.4 if title else 0)))
    ax.imshow(grid, vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


@figure_style()
def loss_curve(history: Sequence[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [np.nan if h["train_loss"] is None else -h["train_loss"] for h in history], label="train ELBO (minibatch estimate)")
    test = [(h["epoch"], h["test_elbo"]) for h in history if h.get("test_elbo") is not None]
    if test:
        ax.plot(*zip(*test), "o-", label="test ELBO")
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
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
def graph(model, data, path: Path, title: str = "the model's graph") -> Path:
    """The model's graph (diagnostics/structure.py) traced on ``data``, drawn as the report draws it."""
    from .diagnostics.structure import model_structure
    from .report.figures import draw_structure  # the report's figures import this module: imported here

    return save_figure(draw_structure(model_structure(model, data), title), path, bbox_inches="tight")


def run_plots(model, data, history, folder: Path) -> List[Path]:
    """A built-in model's figures."""
    from .diagnostics.structure import graph_data

    folder.mkdir(parents=True, exist_ok=True)
    x = data.test_x
    return [
        loss_curve(history, folder / "loss.png"),
        reconstructions(model, x, data.image_shape, folder / "reconstructions.png"),
        samples(model, data.image_shape, folder / "samples.png"),
        latent_scatter(model, x[:2000], None if data.test_labels is None else data.test_labels[:2000], folder / "latent.png",
                       class_names=data.class_names),
        graph(model, graph_data(data), folder / "graph.png"),
    ]


def program_plots(model, data, history, folder: Path) -> List[Path]:
    """A program's figures: its curve and its graph (the others need a built-in's encoder and decoder)."""
    from .diagnostics.structure import graph_data

    folder.mkdir(parents=True, exist_ok=True)
    return [loss_curve(history, folder / "loss.png"), graph(model, graph_data(data), folder / "graph.png")]
