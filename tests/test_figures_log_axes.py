"""Log axes print plain numbers (1, 10, 100, 1k), never the raw mathtext matplotlib's log formatter writes and
the house style (text.parse_math = False) would show as written."""

import re
from pathlib import Path

import numpy as np
import pytest

import pyro_vae
from pyro_vae.figures import counts
from pyro_vae.figures.style import plain_number


@pytest.mark.parametrize("value, text", [(0.001, "0.001"), (0.5, "0.5"), (1, "1"), (20, "20"), (100, "100"),
                                         (1000, "1k"), (20000, "20k"), (1e6, "1M"), (2.5e9, "2.5G")])
def test_plain_number(value, text):
    assert plain_number(value) == text


def _labels(monkeypatch, observed, predicted, tmp_path):
    """The mean-variance figure's visible tick labels, read off the figure before it is saved."""
    seen = {}

    def keep(fig, path, **kwargs):
        fig.canvas.draw()
        ax = fig.axes[0]
        seen["labels"] = []
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if lo <= tick.get_loc() <= hi and tick.label1.get_text():
                    seen["labels"].append(tick.label1.get_text())
        return path

    monkeypatch.setattr(counts, "save_figure", keep)
    counts.mean_variance(observed, predicted, tmp_path / "mv.png")
    return seen["labels"]


def test_mean_variance_axes_are_labelled_in_plain_numbers(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    means = np.geomspace(0.05, 2000, 40)
    x = rng.negative_binomial(2.0, 2.0 / (2.0 + means), size=(400, 40)).astype(float)
    labels = _labels(monkeypatch, x, x, tmp_path)
    assert labels and not [t for t in labels if re.search(r"[$\\^{}]", t)], labels
    assert {"1", "10", "100", "1k"} <= set(labels), labels


def test_a_narrow_log_axis_labels_its_2s_and_5s(monkeypatch, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.poisson(np.linspace(2.5, 8, 30), size=(500, 30)).astype(float)
    labels = _labels(monkeypatch, x, x, tmp_path)
    assert {"5"} <= set(labels) and not [t for t in labels if "$" in t], labels


def test_every_log_axis_in_the_figures_goes_through_the_plain_formatter():
    root = Path(pyro_vae.__file__).parent
    pattern = re.compile(r"set_[xy]scale\(\s*['\"]log|\.loglog\(|\.semilog[xy]\(|set_[xy]scale\(\s*['\"]symlog")
    found = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if p.name != "style.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, f"log axes set directly (use figures.style.log_axes): {found}"
