"""Rendering saved diagnostics: ``index.html``, ``report.md``, ``results.json`` and the terminal tables.

The tables are built once, as data (:mod:`.tables`): ``results.json`` holds
them with full-precision numbers, and the HTML and Markdown show the same rows
formatted to 4 significant digits, so every number a reader sees can be traced
to the JSON.  Figures are PNGs in ``figures/``, drawn at render time from the
typed results; ``index.html`` embeds them as base64 so the page is one
self-contained file, and ``report.md`` links the files.

What a report shows comes from files that may come from someone else (a
diagnosis folder, run names, a program's site names): it is data, never
markup.  Every value goes into ``index.html`` through ``html.escape`` and into
``report.md`` through :func:`md_text` (a link's target through
:func:`md_href`); no text read from a file is put into either page as markup.
"""

from __future__ import annotations

import base64
import html
import json
import unicodedata
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

from ..diagnostics.results import Diagnosis
from ..errors import PyroVAEError
from ..store.files import write_text_atomic
from ..serialize import to_plain
from .figures import Figure, Figures, draw_all
from ..evaluation.results import ACTIVE_UNIT_THRESHOLD
from .tables import CONTRACTED, Table, build_tables, fmt, unit

RESULTS_FORMAT = "pyro_vae.report/1"


SECTIONS = [
    ("runs", "Runs"),
    ("side_by_side", "The runs side by side: the inference gap and its parts"),
    ("structure", "The models' graphs"),
    ("khat", "Is q(z|x) a good posterior? Pareto k-hat per point"),
    ("reference", "Reference posterior"),
    ("comparison", "q(z|x) against the reference"),
    ("pairs", "Posteriors of single points"),
    ("sbc", "Calibration"),
    ("sequences", "Sequences over time"),
    ("generated", "What the models generate"),
    ("topics", "Topics"),
    ("recovery", "Recovery of a synthetic source's truth"),
]
TABLE_SECTION = {"runs": "runs", "side_by_side": "side_by_side", "khat": "khat", "worst": "khat", "loo": "khat", "reference": "reference",
                 "nuts_check": "reference", "comparison": "comparison", "comparison_nodes": "comparison", "sbc": "sbc",
                 "sampled_documents": "generated", "topic_runs": "topics", "topics": "topics", "recovery": "recovery"}

GLOSSARY = [
    ("PSIS k-hat", "the estimated Pareto tail shape of the importance weights p(x, z) / q(z|x); it says how heavy the "
     "tail of the weights is, i.e. how much posterior mass q misses. Computed per point (ArviZ psislw)."),
    ("reference posterior", "p(z | x) for the run's own decoder, which is held fixed: NUTS draws, or the exact "
     "posterior on a grid for a 2-D latent."),
    ("R-hat / ESS", "agreement between the NUTS chains (1 when they agree) and the number of effectively independent "
     "draws, per point and latent dimension (ArviZ rank-normalized versions)."),
    ("amortization gap", "ELBO of a q fitted to one point alone minus ELBO of the amortized q(z|x): what sharing one "
     "encoder across all points costs."),
    ("inference gap", "log p(x) - ELBO(q): how loose the encoder's bound is; the approximation gap (log p(x) - "
     "ELBO(q*), q* the best member of q's family for that point alone) is what the family cannot express, the "
     "amortization gap (ELBO(q*) - ELBO(q)) what the encoder fails to find within it (Cremer, Li & Duvenaud 2018)."),
    ("SBC", "simulation-based calibration: simulate z* ~ p(z), x ~ p(x|z*) and rank z* among draws from q(z|x)."),
    ("active units", f"latent dimensions whose encoder mean E_q[z_j|x] varies across the test data: "
     f"Cov_x(E_q[z_j|x]) > {ACTIVE_UNIT_THRESHOLD:g} (Burda et al. 2016). What train and evaluate print, from "
     "the run's metrics.json; it says the encoder uses a dimension, not how much the data pin it down."),
    ("contracted dims", f"latent dimensions whose posterior contraction, 1 - posterior variance / prior variance "
     "(the variance of the reference posterior, or of q(z|x) without one, averaged over the diagnosed points), "
     f"exceeds {CONTRACTED:g}: the data pin them down. A dimension can be an active unit with a wide posterior, "
     "so the two counts can differ."),
]

def glossary(diagnosis: Diagnosis) -> List[Tuple[str, str]]:
    """GLOSSARY in the report's own word for a row: "sequence(s)" for "point(s)" when every run is a chain."""
    if unit(diagnosis) != "sequence":
        return list(GLOSSARY)
    return [(term, re.sub(r"\bpoint(s?)\b", r"sequence\1", text)) for term, text in GLOSSARY]


# what the report folder holds beside the pages, and what each file is
FILE_ROLES = [
    ("index.html", "this report as one self-contained page"),
    ("report.md", "this report in Markdown, with the figures linked"),
    ("results.json", "every table and figure of this report, numbers at full precision"),
    ("diagnostics.json", "the saved diagnosis, which 'pyro-vae report' renders again without running a model"),
]
RUN_FILE_ROLES = [
    ("q.nc", "draws from q(z|x) (ArviZ netCDF)"),
    ("reference.nc", "the reference posterior's draws (ArviZ netCDF)"),
    ("nuts.nc", "the NUTS draws checked against the exact grid (ArviZ netCDF)"),
    ("grid.npz", "the exact grid posterior (NumPy)"),
    ("generated.npz", "reconstructions, samples and traversals, decoded at diagnose time (NumPy)"),
    ("sequences.npz", "a chain's first sequences: steps, lengths, reconstructions and q's draws (NumPy)"),
]
PAGES = ("index.html", "report.md", "results.json")  # written by write_report itself


def write_report(diagnosis: Diagnosis, out_dir, *, log: Optional[Callable[[str], None]] = None) -> Dict[str, Path]:
    """Write ``index.html``, ``report.md``, ``results.json`` and ``figures/*.png`` into ``out_dir``.

    Reads only the diagnosis (as returned by :func:`diagnose` or :func:`load_diagnosis`); runs no model.
    """
    log = log or (lambda msg: None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PyroVAEError(f"--out {out}: is a file; choose a folder")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for old in (out / "figures").glob("*.png"):
        old.unlink()  # figures of an earlier report here must not linger beside the new ones
    tables = build_tables(diagnosis)
    log(f"writing figures to {out / 'figures'}")
    figures = draw_all(Figures(out / "figures"), diagnosis)
    results = diagnosis.to_json() | {"format_report": RESULTS_FORMAT, "tables": to_plain(tables),
                                     "figures": [f.to_json() for f in figures]}
    paths = {"json": out / "results.json", "html": out / "index.html", "md": out / "report.md"}
    write_text_atomic(paths["json"], json.dumps(results, indent=1) + "\n")
    files = report_files(diagnosis, out)
    write_text_atomic(paths["html"], render_html(diagnosis, tables, figures, out, files))
    write_text_atomic(paths["md"], render_markdown(diagnosis, tables, figures, files))
    return paths


def report_files(d: Diagnosis, out: Path) -> List[Tuple[str, str]]:
    """(path relative to the report folder, what it holds) for the pages and every saved file beside them."""
    files = [(name, role) for name, role in FILE_ROLES if name in PAGES or (out / name).exists()]
    for r in d.runs:
        if _plain_name(r.folder):
            files += [(f"{r.folder}/{name}", role) for name, role in RUN_FILE_ROLES
                      if (out / r.folder / name).exists()]
    return files


def _plain_name(folder: str) -> bool:
    """A run's folder as diagnose names it, a folder inside the report's (the name is read from a file: a path
    such as ``../x`` or ``/x`` is not linked)."""
    return folder not in ("", ".", "..") and "/" not in folder and "\\" not in folder


def _title(d: Diagnosis) -> str:
    names = [r.name for r in d.runs]
    return "Posterior diagnostics: " + (" vs ".join(names) if len(names) <= 4 else f"{len(names)} runs")


def _made_by(d: Diagnosis) -> str:
    """pyro_vae, and the ArviZ that computed the diagnosis where it was recorded (0.x and 1.x differ in places)."""
    return f"pyro_vae with ArviZ {d.arviz}" if d.arviz else "pyro_vae"


def _settings_line(d: Diagnosis) -> str:
    s = d.settings
    ref = {"nuts": f"NUTS ({s.nuts_chains} chains x {s.nuts_samples} draws after {s.nuts_warmup} warmup; "
                   "exact grid for 2-D latents)", "grid": "exact grid", "none": "none"}[s.reference]
    u = unit(d)
    return (f"{s.points} test {u}s per run; {s.draws} draws from q per {u}; reference: {ref}; "
            f"per-{u} q: {s.local_steps} Adam steps; SBC: {s.sbc_sims} simulations x {s.sbc_draws} draws; "
            f"seed {s.seed}.")


def _sites_line(d: Diagnosis) -> str:
    """Which latent sites each run's diagnostics cover, and which discrete sites they sum out ("" if unknown)."""
    return " ".join(f"Latent sites of {r.name}: {r.coverage}." for r in d.runs if r.latent_sites or r.summed_sites)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.table-wrap{overflow-x:auto;max-width:100%;margin:.6em 0 .3em}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f3f3f3;vertical-align:bottom}th span{display:inline-block;max-width:7.5em}
td{white-space:nowrap}td.text{white-space:normal;min-width:5em;max-width:22em;overflow-wrap:break-word}
td:first-child,th:first-child,th.text,td.text{text-align:left}
@media (max-width:900px){table{font-size:.8em}th,td{padding:.2em .35em}}
ul.files code{overflow-wrap:anywhere}
.note{color:#555;font-size:.88em;max-width:60em}.meta{color:#666;font-size:.9em}
.warnings{background:#fff4e5;border:1px solid #f0a040;border-left:6px solid #e07000;padding:.6em 1em;margin:1em 0}
.warnings li{margin:.3em 0}.ok{background:#eef8ee;border:1px solid #8c8;padding:.5em 1em}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85em;color:#444;max-width:60em}
code{background:#f5f5f5;padding:0 .2em}
"""


def render_html(d: Diagnosis, tables: List[Table], figures: List[Figure], out: Path,
                files: Sequence[Tuple[str, str]]) -> str:
    """The self-contained page: tables, embedded figures, warnings, glossary, links to the files beside it."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{e(_title(d))}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>{e(_title(d))}</h1>")
    parts.append(f"<p class=\"meta\">Created {e(d.created)} by {e(_made_by(d))}. {e(_settings_line(d))} "
                 "Every number in the tables is in <code>results.json</code>; draws are in the netCDF files beside it.</p>")
    if _sites_line(d):
        parts.append(f"<p class=\"meta\" id=\"sites\">{e(_sites_line(d))}</p>")
    if d.warnings:
        parts.append("<div class=\"warnings\" id=\"warnings\"><strong>Warnings</strong><ul>")
        parts += [f"<li>{e(w)}</li>" for w in d.warnings]
        parts.append("</ul></div>")
    else:
        parts.append("<p class=\"ok\" id=\"warnings\">No warnings: every check passed.</p>")
    for sec, title in SECTIONS:
        body = []
        for t in tables:
            if TABLE_SECTION.get(t.id) == sec:
                body.append(_html_table(t, heading=t.title != title))
        for f in figures:
            if f.section == sec:
                body.append(f"<figure>{_html_image(f, out)}<figcaption><strong>{e(f.title)}.</strong> "
                            f"{e(f.caption)}</figcaption></figure>")
        if body:
            parts.append(f"<h2 id=\"{sec}\">{e(title)}</h2>")
            parts += body
    parts.append("<h2 id=\"glossary\">How to read this report</h2><dl>")
    for term, text in glossary(d):
        parts.append(f"<dt><strong>{e(term)}</strong></dt><dd>{e(text)}</dd>")
    parts.append("</dl>")
    items = "".join(f"<li><a href=\"{e(quote(f))}\"><code>{e(f)}</code></a>: {e(role)}</li>"
                    for f, role in files if f != "index.html")
    parts.append(f"<h2 id=\"files\">Files</h2><ul class=\"files\">{items}</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_image(f: Figure, out: Path) -> str:
    """The figure's PNG, drawn by this report, embedded as base64."""
    e = html.escape
    data = base64.b64encode((out / f.file).read_bytes()).decode("ascii")
    return f"<img src=\"data:image/png;base64,{data}\" alt=\"{e(f.title)}\" data-file=\"{e(f.file)}\">"


TEXT_CELL = " class=\"text\""  # left-aligned, may wrap


def _html_table(t: Table, heading: bool = True) -> str:
    """One table in a box that scrolls sideways when the page is narrower than the table; its own heading
    unless it would repeat the section's."""
    e = html.escape
    # a header as narrow as its longest word, so long names wrap instead of widening the table
    text = [bool(t.rows) and all(isinstance(row[i], str) or row[i] is None for row in t.rows)
            for i in range(len(t.columns))]
    head = "".join(f"<th{TEXT_CELL if txt else ''}><span>{e(c)}</span></th>" for c, txt in zip(t.columns, text))
    rows = []
    for row in t.rows:
        cells = []
        for v in row:
            cells.append(f"<td{TEXT_CELL if isinstance(v, str) else ''}>{e(fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    title = f"<h3>{e(t.title)}</h3>" if heading else ""
    return (f"{title}<div class=\"table-wrap\"><table id=\"table-{e(t.id)}\" data-table=\"{e(t.id)}\"><thead>"
            f"<tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div><p class=\"note\">{e(t.note)}</p>")


# Markdown's own marks, escaped with a backslash wherever text is shown: emphasis, code, links and images,
# tables, strikethrough, math ($ on GitHub), attribute lists ({: ...} in kramdown) and headings
_MD_MARKS = re.compile(r"([\\`*_\[\]{}|~$#])")


def md_text(value) -> str:
    """Text as Markdown shows it literally: on one line, HTML's ``&<>`` as entities (so no tag or entity a
    viewer would render), and Markdown's own marks escaped."""
    one_line = " ".join(str(value).split())  # a line break could start a block (a heading, raw HTML)
    return _MD_MARKS.sub(r"\\\1", html.escape(one_line, quote=False))


def md_href(path: str) -> str:
    """A relative file path as a Markdown link's target: URL-quoted, so it cannot end the link or name a scheme."""
    return quote(path)


def render_markdown(d: Diagnosis, tables: List[Table], figures: List[Figure],
                    files: Sequence[Tuple[str, str]] = ()) -> str:
    """The same report in Markdown, linking the figure files and the files beside it; all text through md_text."""
    m = md_text
    lines = [f"# {m(_title(d))}", "", f"Created {m(d.created)} by {m(_made_by(d))}. {m(_settings_line(d))}",
             "Every number in the tables is in `results.json`.", ""]
    if _sites_line(d):
        lines += [m(_sites_line(d)), ""]
    if d.warnings:
        lines += ["## Warnings", ""] + [f"- **{m(w)}**" for w in d.warnings] + [""]
    else:
        lines += ["No warnings: every check passed.", ""]
    for sec, title in SECTIONS:
        body = []
        for t in tables:
            if TABLE_SECTION.get(t.id) == sec:
                body += ([f"### {m(t.title)}", ""] if t.title != title else []) + [
                    "| " + " | ".join(m(c) for c in t.columns) + " |", "|" + "|".join("---" for _ in t.columns) + "|"]
                body += ["| " + " | ".join(m(fmt(v)) for v in row) + " |" for row in t.rows]
                body += ["", m(t.note), ""]
        for f in figures:
            if f.section == sec:
                body += [f"![{m(f.title)}]({md_href(f.file)})", "", f"*{m(f.title)}.* {m(f.caption)}", ""]
        if body:
            lines += [f"## {m(title)}", ""] + body
    lines += ["## How to read this report", ""] + [f"- **{m(t)}**: {m(text)}" for t, text in glossary(d)] + [""]
    listed = [f"- [{m(f)}]({md_href(f)}): {m(role)}" for f, role in files if f != "report.md"]
    if listed:
        lines += ["## Files", ""] + listed + [""]
    return "\n".join(lines)


def terminal_text(text: str) -> str:
    """``text`` with every control or format character (an escape sequence a crafted name could carry, a
    right-to-left override) written as its escape, so that printing a saved name never drives the terminal."""
    return "".join(ch if unicodedata.category(ch)[0] != "C" else ch.encode("unicode_escape").decode("ascii")
                   for ch in str(text))


def render_text(d: Diagnosis, table_ids: Sequence[str] = ("side_by_side", "khat", "loo", "reference", "nuts_check", "comparison",
                                                       "comparison_nodes", "sbc")) -> str:
    """The main tables and the warnings as plain text, for the terminal."""
    lines = []
    if any(r.summed_sites for r in d.runs):  # the terminal says it only where it changes what z means
        lines += [terminal_text(_sites_line(d)), ""]
    for t in build_tables(d):
        if t.id not in table_ids or not t.rows:
            continue
        cells = [t.columns] + [[terminal_text(fmt(v)) for v in row] for row in t.rows]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(t.columns))]
        lines.append(t.title)
        for j, r in enumerate(cells):
            lines.append("  " + "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
            if j == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        lines.append("")
    if d.warnings:
        lines.append("warnings:")
        lines += [f"  - {terminal_text(w)}" for w in d.warnings]
    else:
        lines.append("no warnings")
    return "\n".join(lines)
