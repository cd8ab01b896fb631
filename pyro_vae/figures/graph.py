"""The drawing of a model's graph: its nodes in layers, the data plate, the model's and the guide's arrows.

Drawn from a :class:`~pyro_vae.diagnostics.results.ModelStructure` alone (names, kinds, edges), so a run's
plots (figures/run.py) and the report (report/figures.py) draw the same figure, the report from a saved
diagnosis without a model.  matplotlib's pieces are imported where the figure is drawn (figures/style.py
says why).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from ..diagnostics.results import (DETERMINISTIC, ENUMERATED, FACTOR, INPUT, LATENT, OBSERVED, PARTLY_OBSERVED, GraphNode,
                                   ModelStructure)
from .style import COLORS, INK, pyplot

GUIDE_COLOR = COLORS[1]
SHADE = "#b8b8b8"  # observed: what the data fix
INPUT_SHADE = "#e2e2e2"
NODE_R = 0.42  # node radius, in units of the layout's grid
DX, DY = 1.9, 1.75  # grid spacing across and down


def _layers(s: ModelStructure) -> Dict[str, int]:
    """Each node's row: roots (and inputs) at the top, one row below the lowest parent, observed nodes at the bottom.

    Parents are the model's edges (the guide's, for a site of the guide alone); a parent not placed yet (a
    program that reads its observed data) is left out, so the rows exist for any program.
    """
    names = [n.name for n in s.nodes]
    parents: Dict[str, List[str]] = {n: [] for n in names}
    for e in s.edges:
        parents[e.child].append(e.parent)
    for n in s.nodes:
        if not n.in_model:
            parents[n.name] = [e.parent for e in s.guide_edges if e.child == n.name]
    observed = {n.name for n in s.nodes if n.kind == OBSERVED}
    row: Dict[str, int] = {}

    def place(name, skip_observed):
        ps = [row[p] for p in parents[name] if p in row and not (skip_observed and p in observed)]
        row[name] = 1 + max(ps) if ps else 0

    for name in names:  # inputs first, then sites in trace order: parents come first
        if name not in observed:
            place(name, True)
    bottom = 1 + max((row[n] for n in row), default=0) if row else 0
    for name in observed:
        row[name] = bottom
    for name in names:  # what reads an observed node (a factor of x) goes below it
        if name not in observed and any(p in observed for p in parents[name]):
            place(name, False)
    return row


def _positions(s: ModelStructure) -> Dict[str, Tuple[float, float]]:
    """Grid positions: rows from _layers; in each row the sites outside the data plate on the left, the plate's
    nodes ordered by their parents' mean position (fewer crossings) and centred."""
    row = _layers(s)
    order = {n.name: i for i, n in enumerate(s.nodes)}
    parents: Dict[str, List[str]] = {}
    for e in s.edges:
        parents.setdefault(e.child, []).append(e.parent)
    in_plate = {n.name: s.data_plate is not None and s.data_plate in n.plates for n in s.nodes}
    rows = sorted(set(row.values()))
    outside = max((sum(1 for n in row if row[n] == r and not in_plate[n]) for r in rows), default=0)
    inside = max((sum(1 for n in row if row[n] == r and in_plate[n]) for r in rows), default=0)
    left = outside + (0.6 if outside else 0.0)  # a gap between the globals and the plate
    pos: Dict[str, Tuple[float, float]] = {}
    for r in rows:
        here = [n for n in row if row[n] == r]

        def key(n):
            xs = [pos[p][0] for p in parents.get(n, ()) if p in pos]
            return (np.mean(xs) if xs else np.inf, order[n])

        for group, x0, width in (([n for n in here if not in_plate[n]], 0.0, outside),
                                 ([n for n in here if in_plate[n]], left, inside)):
            group.sort(key=key if r else order.get)
            for i, n in enumerate(group):
                pos[n] = (x0 + (width - len(group)) / 2 + i, -float(r))
    return {n: (x * DX, y * DY) for n, (x, y) in pos.items()}


def _sublabel(n: GraphNode) -> str:
    """What a node is, under it: its distribution (or "input") and numbers per point; how it is treated."""
    if n.kind == INPUT:
        first = "input" + (", integer" if n.discrete else "") + (f", {n.size}" if n.size != 1 else "")
    elif n.kind == FACTOR:
        first = "factor"
    else:
        first = f"{n.distribution}" + (f"({n.categories})" if n.categories else "") + (f", {n.size}" if n.size != 1 else "")
    extra = {PARTLY_OBSERVED: "partly observed", ENUMERATED: "summed out", DETERMINISTIC: "deterministic"}.get(n.kind)
    if n.in_model and not n.in_guide and n.kind in (LATENT, ENUMERATED):
        extra = (extra + ", " if extra else "") + "model only"
    if not n.in_model:
        extra = "guide only"
    return first + (f"\n{extra}" if extra else "")


def _ringed(n: GraphNode) -> bool:
    """A discrete site gets a ring inside; an observed one only where it takes a few values (a label, not an image)."""
    return n.kind not in (INPUT, FACTOR) and n.discrete and (n.kind != OBSERVED or n.categories is not None)


def _node_patches(n: GraphNode, x: float, y: float) -> list:
    """The shapes of one node: circles for sites (shaded observed, half-shaded partly observed, a ring inside a
    discrete one, dotted deterministic), a shaded square for an input, a small black square for a factor."""
    from matplotlib.patches import Circle, Rectangle, Wedge

    r = NODE_R
    if n.kind == INPUT:
        return [Rectangle((x - r, y - r), 2 * r, 2 * r, facecolor=INPUT_SHADE, edgecolor=INK, lw=1.3)]
    if n.kind == FACTOR:
        return [Rectangle((x - r / 2, y - r / 2), r, r, facecolor=INK, edgecolor=INK)]
    out = [Circle((x, y), r, facecolor=SHADE if n.kind == OBSERVED else "white", edgecolor="none")]
    if n.kind == PARTLY_OBSERVED:
        out.append(Wedge((x, y), r, 90, 270, facecolor=SHADE, edgecolor="none"))  # the left half: observed rows
    out.append(Circle((x, y), r, facecolor="none", edgecolor=INK, lw=1.3, ls=":" if n.kind == DETERMINISTIC else "-"))
    if _ringed(n):
        out.append(Circle((x, y), 0.8 * r, facecolor="none", edgecolor=INK, lw=0.9))
    return out


def _ring_marker():
    """The legend's sign of a discrete site, a circle with a ring inside, as a path (a text marker would be mathtext,
    which the house style turns off)."""
    from matplotlib.path import Path

    return Path.make_compound_path(Path.unit_circle(), Path.circle(radius=0.6))


def _arrow(ax, p, q, color, dashed, bend, zorder):
    """An arrow from node to node; a bent one (matplotlib's arc3) leaves and meets the circles where its
    curve does, on the side it bulges to, clear of the labels under the nodes."""
    from matplotlib.patches import FancyArrowPatch

    (x1, y1), (x2, y2) = p, q
    d = np.hypot(x2 - x1, y2 - y1)
    if d == 0:
        return
    u = np.array([x2 - x1, y2 - y1]) / d
    phi = np.arctan(2 * bend)  # the angle between a quadratic arc's chord and its ends' tangents

    def turned(v, a):
        return np.array([v[0] * np.cos(a) - v[1] * np.sin(a), v[0] * np.sin(a) + v[1] * np.cos(a)])

    gap = NODE_R * 1.06
    start, end = np.array(p) + gap * turned(u, -phi), np.array(q) + gap * turned(-u, phi)
    ax.add_patch(FancyArrowPatch(tuple(start), tuple(end), arrowstyle="-|>", mutation_scale=11, color=color, lw=1.2,
                                 ls=(0, (4, 2.5)) if dashed else "-", connectionstyle=f"arc3,rad={bend}", zorder=zorder))


def draw_structure(s: ModelStructure, title: str):
    """A figure of a model's graph (matplotlib only): see _layers, _positions and _node_patches for the drawing."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch

    pos = _positions(s)
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    width, height = max(xs) - min(xs) + 2 * DX, max(ys) - min(ys) + 1.6 * DY
    fig, ax = plt.subplots(figsize=(max(4.8, 1.25 * width), max(3.0, 1.25 * height + 0.9)))
    ax.set_aspect("equal")
    ax.axis("off")
    plate = [n.name for n in s.nodes if s.data_plate is not None and s.data_plate in n.plates]
    if plate:
        px = [pos[n][0] for n in plate]
        py = [pos[n][1] for n in plate]
        pad_x, pad_top, pad_bottom = NODE_R + 0.45, NODE_R + 0.3, NODE_R + 0.75  # room for the labels under nodes
        ax.add_patch(FancyBboxPatch((min(px) - pad_x, min(py) - pad_bottom), max(px) - min(px) + 2 * pad_x,
                                    max(py) - min(py) + pad_top + pad_bottom, boxstyle="round,pad=0,rounding_size=0.15",
                                    facecolor="none", edgecolor="#777777", lw=1.1, zorder=0))
        ax.text(max(px) + pad_x - 0.12, min(py) - pad_bottom + 0.1, s.data_plate, ha="right", va="bottom",
                fontsize=7.5, color="#555555")
    # the model's edges straight; the guide's bent, so that q(z|x) against p(x|z) shows as two arrows
    for e in s.edges:
        _arrow(ax, pos[e.parent], pos[e.child], INK, False, 0.0, 1)
    for e in s.guide_edges:  # over the labels: they enter the nodes from below
        _arrow(ax, pos[e.parent], pos[e.child], GUIDE_COLOR, True, 0.4, 4)
    for n in s.nodes:
        x, y = pos[n.name]
        for patch in _node_patches(n, x, y):
            patch.set_zorder(2)
            ax.add_patch(patch)
        if n.kind != FACTOR:
            size = 9 if len(n.name) <= 4 else max(5.5, 9 - 0.45 * (len(n.name) - 4))
            ax.text(x, y, n.name, ha="center", va="center", fontsize=size, zorder=3)
        # on white, over the edges that leave the node downwards
        ax.text(x, y - NODE_R - 0.08, (n.name + "\n" if n.kind == FACTOR else "") + _sublabel(n), ha="center",
                va="top", fontsize=6.5, color="#444444", zorder=3, linespacing=1.1,
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.6))
    ax.set_xlim(min(xs) - DX * 0.9, max(xs) + DX * 0.9)
    ax.set_ylim(min(ys) - DY * 0.9, max(ys) + DY * 0.5)
    kinds = {n.kind for n in s.nodes}
    marks = [(LATENT, "latent", dict(marker="o", mfc="white"), {LATENT, ENUMERATED}),
             (OBSERVED, "observed", dict(marker="o", mfc=SHADE), {OBSERVED}),
             (PARTLY_OBSERVED, "partly observed", dict(marker="o", mfc=SHADE, fillstyle="left", mfcalt="white"),
              {PARTLY_OBSERVED}),
             (DETERMINISTIC, "deterministic (dotted)", dict(marker="o", mfc="white"), {DETERMINISTIC}),
             (INPUT, "input (given)", dict(marker="s", mfc=INPUT_SHADE), {INPUT}),
             (FACTOR, "factor", dict(marker="s", mfc=INK, markersize=6), {FACTOR})]
    handles = [Line2D([], [], ls="none", mec=INK, label=label, **({"markersize": 10} | m)) for _, label, m, shown in marks
               if shown & kinds]
    if any(_ringed(n) for n in s.nodes):
        handles.append(Line2D([], [], ls="none", marker=_ring_marker(), mfc="none", mec=INK, mew=1.0, markersize=10,
                              label="discrete"))
    handles.append(Line2D([], [], color=INK, lw=1.2, label="model p: reads"))
    if s.guide_edges:
        handles.append(Line2D([], [], color=GUIDE_COLOR, lw=1.2, ls=(0, (4, 2.5)), label="guide q: reads"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)), fontsize=7,
              frameon=False)
    ax.set_title(title, fontsize=10)
    return fig


def structure_caption(s: ModelStructure) -> str:
    """How to read the graph, and what it was traced on."""
    text = ("Drawn from the program itself, traced with provenance tracking on a few rows "
            f"({'; '.join(s.traced)}): an arrow means the child's distribution reads the parent's value, solid in the "
            "model, dashed in the guide. Circles are sample sites (shaded: observed; half-shaded: observed on some "
            "rows, latent on the others; a ring inside: discrete), squares data arrays given as inputs; the rounded "
            "box is the data plate.")
    return text + (f" Note: {s.note}." if s.note else "")
