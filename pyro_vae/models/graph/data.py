"""The data a graph reads: its named arrays checked against its data nodes (roles, widths, classes), in one line each."""

from __future__ import annotations

from typing import Dict

from ...data import batch
from ...errors import PyroVAEError
from .spec import Graph, check_summable


def check_graph_data(g: Graph, widths: Dict[str, int], obs_site: str, data, what: str = "the data") -> None:
    """One line naming the node and the fix when ``data`` (a tensor or named arrays) does not fit the graph ``g``
    (``widths``: each observed node's row width; ``obs_site``: the node a single tensor is)."""
    named = batch.is_named(data)
    arrays = dict(data) if named else {obs_site: data}
    needed = [n for n in g.order if g.nodes[n].role in ("observed", "input", "partial")]
    for name in needed:
        if name not in arrays:
            role = g.nodes[name].role
            fix = ("set data.labels = \"%s\" (a labelled source) or give data.arrays" % name if role != "observed"
                   else "name the arrays after the graph's nodes")
            raise PyroVAEError(f"model.nodes.{name} is {'an' if role == 'input' else 'a'} {role} node but {what} "
                               f"has no array {name!r} (it has {', '.join(arrays)}): {fix}")
    for name in arrays:
        if name not in g.nodes:
            raise PyroVAEError(f"{what} has an array {name!r} that no node of the graph reads: add a node "
                               f"[model.nodes.{name}] (role = \"input\", \"observed\" or \"partial\") or drop it")
    for name in needed:
        node, value = g.nodes[name], arrays[name]
        if node.role == "observed":
            if len(value.shape) != 2 or value.shape[1] != widths[name]:  # a memory map has a shape too
                raise PyroVAEError(f"model.nodes.{name}: {what}'s array {name!r} has shape {tuple(value.shape)}, "
                                   f"but the node takes rows of {widths[name]} values: fix its dim or the data")
            continue
        if node.family in ("categorical", "bernoulli"):
            k = node.dim if node.family == "categorical" else 2 ** node.dim
            bad = value.is_floating_point() or value.dim() != 1
            low = -1 if node.role == "partial" else 0
            if not bad and value.numel():
                bad = bool(((value < low) | (value >= k)).any())
            if bad:
                missing = " (-1 where a row has none)" if node.role == "partial" else ""
                raise PyroVAEError(f"model.nodes.{name}: {what}'s array {name!r} must hold one integer class "
                                   f"0..{k - 1}{missing} per row (got dtype {value.dtype}, shape "
                                   f"{tuple(value.shape)}): fix the data or the node's dim")
            if node.role == "partial" and not bad and value.numel() and bool((value < 0).any()):
                every = bool((value < 0).all())
                check_summable(g, name, f"{what}'s {name!r} is -1 (missing) on "
                                        f"{'every row' if every else 'some rows'}, where {name} is summed out")
            if node.role == "input" and value.numel() and bool((value < 0).any()):
                raise PyroVAEError(f"model.nodes.{name}: an input is always given, but {what}'s {name!r} has "
                                   "missing (-1) rows: make the node role = \"partial\" or fill them in")
        elif value.dim() != 2 or value.shape[1] != node.dim:
            raise PyroVAEError(f"model.nodes.{name}: {what}'s array {name!r} has shape {tuple(value.shape)}, "
                               f"but the node's dim is {node.dim}: fix its dim or the data")
