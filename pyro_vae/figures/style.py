"""The house style of every figure: matplotlib on Agg, one look, PNGs through the atomic writer, image grids.

Every figure of the library (a run's and the report's) is drawn inside
:func:`figure_style`: dark ink on white, images in ``gray_r``, one font and
one colour cycle, text as written (no mathtext), whatever the caller's
settings are.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from cycler import cycler

from ..store.files import write_atomic

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
INK = "#222222"
STYLE = {
    "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
    "savefig.edgecolor": "white", "savefig.transparent": False,
    "text.color": INK, "axes.labelcolor": INK, "axes.titlecolor": INK, "axes.edgecolor": INK,
    "xtick.color": INK, "ytick.color": INK, "grid.color": "#b0b0b0",
    "legend.facecolor": "white", "legend.edgecolor": "#cccccc", "legend.framealpha": 0.9,
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 10, "axes.titlesize": 10,
    "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 10,
    "image.cmap": "gray_r", "image.interpolation": "nearest", "boxplot.medianprops.color": "#ff7f0e",
    "axes.prop_cycle": cycler(color=COLORS),
    # text is shown as written: names from a program or a file ("a$b$", "x_1") are not TeX, and a "$" pair in
    # one must neither turn into mathtext nor stop a figure with a parse error
    "text.parse_math": False,
}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed).

    Imported when the first figure is drawn, not with pyro_vae: importing the library must not switch a
    notebook's backend, nor pay for matplotlib where nothing is drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The one style of every figure, from matplotlib's defaults up, so a caller's dark theme cannot leak in.

    Also a decorator (``@figure_style()``); the caller's settings come back on exit.
    """
    with pyplot().style.context(STYLE, after_reset=True):
        yield


def plain_number(value: float) -> str:
    """A tick value as people write it: 0.01, 1, 10, 100, 1k, 10k, 1M (no powers of ten in mathtext)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:.6g}"


def log_axes(ax, x: bool = True, y: bool = True) -> None:
    """Log scale on the chosen axes of ``ax``, labelled with plain numbers (:func:`plain_number`).

    matplotlib's log formatter writes ``$\\mathdefault{10^{2}}$``, which the house style's ``text.parse_math =
    False`` shows as that raw text.  Decades are labelled; where an axis spans under two decades, or fewer than
    two decades fall inside it (one from 1.4 to 45 shows only 10), the 2s and 5s between them are labelled too.
    """
    from matplotlib.ticker import Formatter

    class _Plain(Formatter):
        def __init__(self, minor: bool):
            self.minor = minor

        def __call__(self, value, pos=None):
            if not self.minor:
                return plain_number(value)
            lo, hi = sorted(self.axis.get_view_interval())
            decades = math.floor(math.log10(hi) + 1e-9) - math.ceil(math.log10(lo) - 1e-9) + 1 if lo > 0 else 0
            if lo <= 0 or (hi / lo > 100 and decades >= 2):
                return ""  # a wide axis with two decades or more labelled reads by them alone
            mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
            return plain_number(value) if round(mantissa, 6) in (2.0, 5.0) else ""

    for on, set_scale, axis in ((x, ax.set_xscale, ax.xaxis), (y, ax.set_yscale, ax.yaxis)):
        if on:
            set_scale("log")
            axis.set_major_formatter(_Plain(False))
            axis.set_minor_formatter(_Plain(True))


def save_figure(fig, path: Path, **savefig_kwargs) -> Path:
    """Write ``fig`` as a PNG through the run directory's atomic writer, then free it."""
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, **savefig_kwargs))
    finally:
        pyplot().close(fig)
    return Path(path)


def image_grid(images: np.ndarray, shape, ncols: int) -> np.ndarray:
    """Tile (n, H*W) rows into one (rows*H, ncols*W) array with 1-pixel gaps, scaled to [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
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
    """Rows of images tiled into one grid (:func:`image_grid`), saved as a PNG with an optional title."""
    plt = pyplot()
    grid = image_grid(images, shape, ncols)
    width = max(3, grid.shape[1] / 12)
    # the title wrapped to the figure's width (about 12 characters an inch at 9 points), not cut off at its edges
    lines = textwrap.wrap(title, width=int(width * 12)) if title else []
    fig, ax = plt.subplots(figsize=(width, max(3, grid.shape[0] / 12) + 0.2 * len(lines)))
    ax.imshow(grid, vmin=0, vmax=1)
    ax.axis("off")
    if lines:
        ax.set_title("\n".join(lines), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
