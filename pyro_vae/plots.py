"""A run's figures: loss curve, reconstructions, samples and the latent space, one PNG each.

Matplotlib with the Agg backend (no display needed); every PNG goes through
the run directory's atomic writer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .rundir.files import write_atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


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


def save_image_grid(images: np.ndarray, shape, path: Path, ncols: int = 10, title: Optional[str] = None) -> Path:
    plt = _plt()
    grid = image_grid(np.asarray(images, dtype=np.float32), shape, ncols)
    fig, ax = plt.subplots(figsize=(max(3, grid.shape[1] / 12), max(3, grid.shape[0] / 12) + (0.4 if title else 0)))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


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


def latent_scatter(model, x: torch.Tensor, labels: Optional[torch.Tensor], path: Path) -> Path:
    """The 2-D latent itself, else the first two principal components of the encoder means."""
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
    sc = ax.scatter(z[:, 0], z[:, 1], c=c, s=8, cmap="tab10" if c is not None else None, alpha=0.8)
    if c is not None:
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(axes_label[0])
    ax.set_ylabel(axes_label[1])
    ax.set_title("latent space (encoder means, test data)")
    fig.tight_layout()
    return save_figure(fig, path)


def run_plots(model, data, history, folder: Path) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    x = data.test
    return [
        loss_curve(history, folder / "loss.png"),
        reconstructions(model, x, data.image_shape, folder / "reconstructions.png"),
        samples(model, data.image_shape, folder / "samples.png"),
        latent_scatter(model, x[:2000], None if data.test_labels is None else data.test_labels[:2000], folder / "latent.png"),
    ]
