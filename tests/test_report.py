"""The rendered report and the run's figures, as a reader meets them.

Two briefly trained runs on the digits (2-D latents, so the exact grid is the
cheap reference) are reported once through the command line, under a dark
matplotlib theme the library must not inherit. The tests read the page's
structure (every table in a box that scrolls sideways, headings said once,
files linked), the figures' pixels (one white-background style for the
report's figures and the run's), the two "how many latent dimensions are in
use" counts under their own names, and latent_scatter's class names. Where
headless Chromium is installed, the page is laid out at 800 and 1400 px and
must not be wider than the window.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess

import matplotlib
import matplotlib.figure
import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.figures.run import latent_scatter

# long run names: the widest tables are the ones whose first column is long
NAMES = ("digits-meanfield-objective-run-one", "digits-trace-objective-run-two")
REPORT_FAST = ["--points", "3", "--reference", "grid", "--draws", "150", "--local-steps", "20", "--sbc-sims", "12",
               "--quiet"]


class _Page(html.parser.HTMLParser):
    """Headings, each table's enclosing element, and the links of the Files section."""

    def __init__(self):
        super().__init__()
        self.headings, self.table_parents, self.file_links, self.style = [], [], [], ""
        self._stack, self._heading, self._section = [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table_parents.append(self._stack[-1] if self._stack else None)
        if tag in ("h1", "h2", "h3"):
            self._heading = ""
            self._section = a.get("id", self._section) if tag == "h2" else self._section
        if tag == "a" and self._section == "files":
            self.file_links.append(a.get("href"))
        if tag == "li" and self._section == "files":
            self.file_links.append(None)  # a list entry; its link, if any, replaces this marker
        if tag not in ("img", "meta", "br"):
            self._stack.append((tag, a.get("class")))

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._heading = None
        if self._stack and self._stack[-1][0] == tag:
            self._stack.pop()

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data
        if self._stack and self._stack[-1][0] == "style":
            self.style += data

    def files(self):
        """One entry per list item of the Files section: its link, or None."""
        out = []
        for x in self.file_links:
            if x is None:
                out.append(None)
            elif out and out[-1] is None:
                out[-1] = x
        return out


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Two runs (meanfield and trace objectives) and their report, all made under a dark matplotlib theme."""
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("report")
    runs = []
    with plt.style.context("dark_background"):
        for name, elbo in zip(NAMES, ("meanfield", "trace")):
            cfg = pv.config_from_dict({
                "data": {"source": "digits", "binarize": "dynamic"},
                "model": {"latent_dim": 2, "likelihood": "bernoulli", "encoder": {"hidden": [32]},
                          "decoder": {"hidden": [32]}},
                "train": {"elbo": elbo, "epochs": 2, "batch_size": 128, "lr": 3e-3, "seed": 0, "device": "cpu"},
            })
            pv.train(cfg, root / name, progress=False, iw_samples=20)
            runs.append(root / name)
        out = root / "out"
        assert main(["report", *map(str, runs), "--out", str(out)] + REPORT_FAST) == 0
        dark = matplotlib.rcParams["figure.facecolor"]
    page = _Page()
    page.feed((out / "index.html").read_text())
    return runs, out, page, dark


def test_every_table_scrolls_inside_its_box(reported):
    runs, out, page, _ = reported
    assert len(page.table_parents) >= 5
    for tag, cls in page.table_parents:
        assert tag == "div" and cls == "table-wrap"
    assert re.search(r"\.table-wrap\{[^}]*overflow-x:auto", page.style)
    assert re.search(r"\.table-wrap\{[^}]*max-width:100%", page.style)


def test_each_heading_once(reported):
    runs, out, page, _ = reported
    assert page.headings.count("Runs") == 1
    assert len(page.headings) == len(set(page.headings)) >= 8
    md = (out / "report.md").read_text()
    md_headings = [line.lstrip("#").strip() for line in md.splitlines() if line.startswith("#")]
    assert md_headings.count("Runs") == 1
    assert len(md_headings) == len(set(md_headings))


def test_markdown_tables_have_as_many_cells_as_columns(reported):
    """A '|' inside a column name or a cell is escaped, so it does not split it (the headers have '|mean error|')."""
    runs, out, page, _ = reported
    cells = lambda line: len(re.split(r"(?<!\\)\|", line)) - 2
    tables, current = [], []
    for line in (out / "report.md").read_text().splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert len(tables) >= 5
    for t in tables:
        n = cells(t[0])
        assert all(cells(line) == n for line in t), t


def test_files_are_links_to_files_that_exist(reported):
    runs, out, page, _ = reported
    links = page.files()
    assert None not in links  # every entry is a link
    for href in links:
        assert not href.startswith(("/", "file:")), href  # relative: the folder can be moved or shared
        assert (out / href).is_file(), href
    for name in ("report.md", "results.json", "diagnostics.json"):
        assert name in links
    for r in json.loads((out / "results.json").read_text())["runs"]:
        assert f"{r['folder']}/q.nc" in links and f"{r['folder']}/reference.nc" in links
    md = (out / "report.md").read_text()
    files = md.split("## Files", 1)[1]
    md_links = re.findall(r"\]\(([^)]+)\)", files)
    assert "index.html" in md_links and "diagnostics.json" in md_links
    for href in md_links:
        assert (out / href).is_file(), href


def test_one_style_for_every_figure(reported):
    runs, out, page, dark = reported
    import matplotlib.image

    assert dark == "black"  # the theme the figures were made under, and got back afterwards
    pngs = sorted((out / "figures").glob("*.png")) + [p for r in runs for p in sorted((r / "plots").glob("*.png"))]
    assert len(pngs) >= 12 and {p.name for p in pngs} >= {"latent.png", "samples.png", "forest.png", "training.png"}
    for p in pngs:
        px = matplotlib.image.imread(str(p))[..., :3]
        corners = np.stack([px[0, 0], px[0, -1], px[-1, 0], px[-1, -1]])
        assert np.all(corners > 0.98), (p.name, corners)  # white background, not the theme's black
        assert px.mean() > 0.6, p.name  # dark ink on white, images included (gray_r)


def test_active_units_and_contracted_dims_are_told_apart(reported):
    runs, out, page, _ = reported
    results = json.loads((out / "results.json").read_text())
    table = next(t for t in results["tables"] if t["id"] == "runs")
    assert "active dims" not in table["columns"]
    col = next(i for i, c in enumerate(table["columns"]) if c.startswith("contracted dims"))
    for row, r in zip(table["rows"], results["runs"]):
        # the report's count is the diagnosis' own
        assert row[col] == r["summary"]["active_dims"] == sum(c > 0.1 for c in r["contraction"])
    html_text = (out / "index.html").read_text()
    for term in ("active units", "contracted dims"):
        assert f"<dt><strong>{term}</strong></dt>" in html_text
    assert "Cov_x(E_q[z_j|x]) &gt; 0.01" in html_text


class _Identity(torch.nn.Module):
    """An encoder whose means are the data: the scatter shows the points where they were drawn."""

    def encode(self, x):
        return x


@pytest.fixture
def legends(monkeypatch):
    """The legend texts of each figure saved while the test runs."""
    seen = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        seen.append([t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return seen


def test_latent_scatter_names_the_classes(tmp_path, legends):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(20)
    x = torch.randn(60, 2, generator=g) * 0.3 + torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])[labels]
    names = ("T-shirt/top", "Trouser", "Pullover")
    path = latent_scatter(_Identity(), x, labels, tmp_path / "named.png", class_names=names)
    assert path.exists() and legends[-1] == list(names)
    latent_scatter(_Identity(), x, labels, tmp_path / "numbered.png")
    assert legends[-1] == ["0", "1", "2"]  # without names, the labels' values
    latent_scatter(_Identity(), x[20:], labels[20:], tmp_path / "two.png", class_names=names)
    assert legends[-1] == ["Trouser", "Pullover"]  # a name belongs to its label, not to its position


CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and os.path.exists(p)), None)
# after layout: how wide the page is, and how many table boxes are wider inside than they show
MEASURE = ("<script>window.addEventListener('load',()=>{const d=document.documentElement;"
           "d.dataset.pageWidth=d.scrollWidth;d.dataset.windowWidth=window.innerWidth;"
           "d.dataset.scrolled=[...document.querySelectorAll('.table-wrap')]"
           ".filter(w=>w.scrollWidth>w.clientWidth+1).length;});</script>")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
@pytest.mark.parametrize("width", [800, 1400, 500])
def test_page_is_no_wider_than_the_window(reported, tmp_path, width):
    runs, out, page, _ = reported
    probe = out / f"probe-{width}.html"
    probe.write_text((out / "index.html").read_text().replace("</body>", MEASURE + "</body>"))
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},1200"]
    try:
        dom = subprocess.run(base + ["--dump-dom", probe.resolve().as_uri()], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    finally:
        probe.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    attrs = dict(re.findall(r'data-(page-width|window-width|scrolled)="(\d+)"', dom.stdout))
    assert int(attrs["page-width"]) <= int(attrs["window-width"]), attrs  # nothing pokes out of the page
    if width == 500:  # the narrowest window headless Chromium lays out
        assert int(attrs["scrolled"]) >= 1  # the widest tables scroll inside their box instead


def test_active_units_from_the_run_are_shown_under_their_name(reported, tmp_path):
    runs, out, page, _ = reported
    d = pv.load_diagnosis(out)
    for i, r in enumerate(d.runs):
        r.info["active_units"] = i + 1  # what the run's evaluation counted, carried in the run's info
    pv.write_report(d, tmp_path)
    table = next(t for t in json.loads((tmp_path / "results.json").read_text())["tables"] if t["id"] == "runs")
    col = table["columns"].index("active units")
    assert [row[col] for row in table["rows"]] == [1, 2]
    assert table["columns"][col + 1].startswith("contracted dims")
