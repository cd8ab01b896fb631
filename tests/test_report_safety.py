"""A report folder's files are data: crafted names, warnings and a stored drawing cannot put markup in a page.

One tiny run is trained and diagnosed once; its diagnostics.json is then edited
as someone else could edit it: a graphviz SVG with a script and an onload
handler in the model's graph, raw HTML in the run's name, a site's and a
node's name, the graph's note and a warning, and run folders that leave the
report folder. Both ways a saved diagnosis is reported are fed it: the command
line reusing the saved diagnosis, and write_report(load_diagnosis(...)).
index.html is parsed (only the page's own tags and attributes, figures as
embedded PNGs, relative links); report.md must hold no "<" at all; the names
must read back exactly, in the pages and in the figures' texts.
"""

from __future__ import annotations

import html
import html.parser
import json
import re
import shutil

import matplotlib.figure
import matplotlib.text
import pytest

import pyro_vae as pv
from pyro_vae.cli import main

FAST = ["--points", "2", "--reference", "none", "--draws", "40", "--local-steps", "0", "--sbc-sims", "0", "--quiet"]
TRAIN = ["--quiet", "--no-plots", "--iw-samples", "5", "--set", "train.epochs=1", "--set", "train.batch_size=512",
         "--set", "model.latent_dim=2", "--set", "model.encoder.hidden=[8]", "--set", "model.decoder.hidden=[8]"]

SVG = ('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)">'
       '<script>alert(document.cookie)</script><text>STORED-SVG-TEXT</text></svg>')
NAME = "<script>alert('run')</script> a/b \"q\" 'r' ünï & [x](javascript:alert(1)) *em* `c`"
SITE = "z<img src=x onerror=alert(1)>/ü \"s\" 'p'"
# a "$" pair that mathtext would fail to parse: the figures show names as written
NODE = "z</text><script>alert(2)</script> $\\nocommand$ \"n\" 'ü' & /"
NOTE = "<iframe src=javascript:alert(3)></iframe>"
WARNING = "<img src=x onerror=alert(4)> look\n\n# not a heading <b>bold</b>"

# every tag the page itself writes, and the only attributes it may carry
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code", "div", "strong", "ul", "li",
        "table", "thead", "tbody", "tr", "th", "td", "span", "figure", "img", "figcaption", "dl", "dt", "dd", "a"}
ATTRS = {"lang", "charset", "name", "content", "class", "id", "data-table", "src", "alt", "data-file", "href"}


class _Page(html.parser.HTMLParser):
    """Every tag with its attributes, and the page's text as a reader sees it (entities decoded)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def assert_no_markup_in_page(page_text: str) -> str:
    """The page holds only its own tags and attributes; returns its text as a reader sees it."""
    assert "<script" not in page_text.lower() and "<svg" not in page_text.lower()
    assert "STORED-SVG-TEXT" not in page_text
    page = _Page(page_text)
    for tag, attrs in page.tags:
        assert tag in TAGS, tag
        assert set(attrs) <= ATTRS, (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
        if tag == "a":
            href = attrs["href"]
            assert re.fullmatch(r"[A-Za-z0-9%._~-][A-Za-z0-9%/._~-]*", href), href  # relative, URL-quoted
            assert not href.startswith("..")
    return " ".join(page.text)


def _md_read(text: str) -> str:
    """What a Markdown viewer shows of text written by md_text: its backslash escapes and entities undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", text))


def assert_no_markup_in_markdown(md: str) -> None:
    """No "<" anywhere (so no raw HTML), and every link's target relative and URL-quoted."""
    assert "<" not in md
    assert "STORED-SVG-TEXT" not in md
    for target in re.findall(r"(?<!\\)\]\(([^)]*)\)", md):  # a link's "](", not an escaped "\]("
        assert re.fullmatch(r"[A-Za-z0-9%._~-][A-Za-z0-9%/._~-]*", target), target


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    """A tiny trained run and its saved diagnosis (reused by every test: each crafts a copy)."""
    root = tmp_path_factory.mktemp("safety")
    assert main(["train", "--out", str(root / "run"), *TRAIN]) == 0
    assert main(["diagnose", str(root / "run"), "--out", str(root / "diagnosis"), *FAST]) == 0
    return root / "run", root / "diagnosis"


def _rename(structure: dict, old: str, new: str) -> None:
    for n in structure["nodes"]:
        n["name"] = new if n["name"] == old else n["name"]
    for e in structure["edges"] + structure["guide_edges"]:
        e["parent"] = new if e["parent"] == old else e["parent"]
        e["child"] = new if e["child"] == old else e["child"]


def _crafted(diagnosis, out):
    """A copy of the diagnosis folder with every attack in its diagnostics.json."""
    shutil.copytree(diagnosis, out)
    raw = json.loads((out / "diagnostics.json").read_text())
    r = raw["runs"][0]
    r["name"] = NAME
    r["latent_sites"] = [SITE]
    r["structure"]["svg"] = SVG  # as an earlier version stored graphviz's drawing
    r["structure"]["note"] = NOTE
    _rename(r["structure"], "z", NODE)
    raw["warnings"] = list(raw["warnings"]) + [WARNING]
    (out / "diagnostics.json").write_text(json.dumps(raw))
    return out


@pytest.fixture
def figure_texts(monkeypatch):
    """Every text of every figure saved while the test runs (titles, labels, legends)."""
    seen = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        out = save(fig, *args, **kwargs)  # drawn first: a text that cannot be drawn fails here
        seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return out

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return seen


def _check_report(out, figure_texts):
    page = (out / "index.html").read_text()
    shown = assert_no_markup_in_page(page)
    for text in (NAME, SITE, NOTE):
        assert text in shown, text  # escaped, and read back exactly
    assert " ".join(WARNING.split()) in " ".join(shown.split())
    md = (out / "report.md").read_text()
    assert_no_markup_in_markdown(md)
    lines = md.splitlines()
    assert _md_read(lines[0]) == f"# Posterior diagnostics: {NAME}"
    assert any(_md_read(line) == f"- **{' '.join(WARNING.split())}**" for line in lines)
    assert not any(line.startswith("# not a heading") for line in lines)
    assert any(SITE in _md_read(line) for line in lines) and any(NOTE in _md_read(line) for line in lines)
    # the graph is drawn at render time, from the nodes: the crafted node's name is one of its labels
    assert NODE in figure_texts and f"{NAME}: the model's graph" in figure_texts


def test_a_crafted_diagnosis_loads_without_its_drawing(diagnosed, tmp_path):
    _, diagnosis = diagnosed
    d = pv.load_diagnosis(_crafted(diagnosis, tmp_path / "crafted"))  # an older file with "svg" still loads
    s = d.runs[0].structure
    assert not hasattr(s, "svg") and NODE in [n.name for n in s.nodes]


def test_write_report_of_a_loaded_diagnosis_injects_nothing(diagnosed, tmp_path, figure_texts):
    _, diagnosis = diagnosed
    d = pv.load_diagnosis(_crafted(diagnosis, tmp_path / "crafted"))
    pv.write_report(d, tmp_path / "report")
    _check_report(tmp_path / "report", figure_texts)


def test_the_command_line_reusing_a_crafted_diagnosis_injects_nothing(diagnosed, tmp_path, figure_texts):
    run, diagnosis = diagnosed
    out = _crafted(diagnosis, tmp_path / "crafted")
    assert main(["report", str(run), "--out", str(out), *FAST]) == 0
    # the crafted name is shown: the saved diagnosis was reused, not computed again
    _check_report(out, figure_texts)


def test_run_folders_from_the_file_choose_no_path(diagnosed, tmp_path):
    """A run folder read from diagnostics.json names figure files inside figures/ only, each its own file."""
    _, diagnosis = diagnosed
    out = _crafted(diagnosis, tmp_path / "crafted")
    raw = json.loads((out / "diagnostics.json").read_text())
    first = raw["runs"][0]
    # two runs under one folder name: their figures must not overwrite each other
    raw["runs"] = [first | {"folder": ".._outside_a_b_c_"}, first | {"folder": ".._outside_a_b_c_"}]
    (out / "diagnostics.json").write_text(json.dumps(raw))
    before = sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    pv.write_report(pv.load_diagnosis(out), out / "report")
    assert sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out) == before
    files = [f["file"] for f in json.loads((out / "report" / "results.json").read_text())["figures"]]
    graphs = [f for f in files if f.startswith("figures/graph_")]
    assert graphs == ["figures/graph_.._outside_a_b_c_.png", "figures/graph_.._outside_a_b_c_-2.png"]
    for f in files:
        assert re.fullmatch(r"figures/[A-Za-z0-9_.-]+\.png", f) and (out / "report" / f).is_file(), f
    page = (out / "report" / "index.html").read_text()
    assert_no_markup_in_page(page)
    assert "outside" not in "".join(a.get("href", "") for _, a in _Page(page).tags)  # not linked
    assert_no_markup_in_markdown((out / "report" / "report.md").read_text())


@pytest.mark.parametrize("folder", ["../outside", "/etc", "a/b", "..", "", 7])
def test_a_run_folder_that_leaves_the_report_folder_is_refused_in_one_line(diagnosed, tmp_path, capsys, folder):
    """load_diagnosis reads each run's draws from the folder diagnostics.json names: only a plain name inside."""
    run, diagnosis = diagnosed
    out = _crafted(diagnosis, tmp_path / "crafted")
    raw = json.loads((out / "diagnostics.json").read_text())
    raw["runs"][0]["folder"] = folder
    (out / "diagnostics.json").write_text(json.dumps(raw))
    with pytest.raises(pv.PyroVAEError, match="not a plain folder name"):
        pv.load_diagnosis(out)
    capsys.readouterr()
    # the command line reuses the saved diagnosis (same run, same settings) and so refuses it the same way
    assert main(["report", str(run), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a plain folder name" in err and not (tmp_path / "outside").exists()


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null", '{"format": "pyro_vae.diagnostics/2", "runs": 3}'])
def test_a_diagnostics_json_of_another_shape_is_one_line(diagnosed, tmp_path, content):
    _, diagnosis = diagnosed
    out = tmp_path / "odd"
    shutil.copytree(diagnosis, out)
    (out / "diagnostics.json").write_text(content)
    with pytest.raises(pv.PyroVAEError) as e:
        pv.load_diagnosis(out)
    assert "\n" not in str(e.value) and "re-run 'pyro-vae diagnose" in str(e.value)


def test_the_terminal_tables_carry_no_control_characters(diagnosed, tmp_path):
    """A name with an escape sequence or a right-to-left override is printed as its escape, never sent raw."""
    _, diagnosis = diagnosed
    out = _crafted(diagnosis, tmp_path / "crafted")
    raw = json.loads((out / "diagnostics.json").read_text())
    raw["runs"][0]["name"] = "run\x1b[2J\x1b]0;title\x07\u202egnp.exe"
    raw["warnings"] = ["warn \x1b[31mred\x1b[0m"]
    (out / "diagnostics.json").write_text(json.dumps(raw))
    from pyro_vae.report.render import render_text

    text = render_text(pv.load_diagnosis(out))
    assert not any(ord(ch) < 32 and ch != "\n" for ch in text) and "\u202e" not in text
    assert "run\\x1b[2J" in text and "warn \\x1b[31mred" in text

