"""The data a graph reads: its named arrays checked against its data nodes (roles, widths, classes), in one line each."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ...errors import PyroVAEError
from .spec import Graph, check_summable


def check_graph_data(g: Graph, widths: Dict[str, int], obs_site: str, data, what: str = "the data",
                     origin: Optional[Tuple[str, torch.Tensor]] = None) -> None:
    """One line naming the node and the fix when ``data`` (named arrays) does not fit the graph ``g``
    (``widths``: each observed node's row width; ``obs_site``: the main observed node).

    ``origin``: (the file's key, each row's row in that file), so that a bad label is named by its row there.
    """
    arrays = dict(data)
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
            _check_classes(name, node, value, what, origin)
            if node.role == "partial" and value.numel() and bool((value < 0).any()):
                every = bool((value < 0).all())
                check_summable(g, name, f"{what}'s {name!r} is -1 (missing) on "
                                        f"{'every row' if every else 'some rows'}, where {name} is summed out")
        elif value.dim() != 2 or value.shape[1] != node.dim:
            raise PyroVAEError(f"model.nodes.{name}: {what}'s array {name!r} has shape {tuple(value.shape)}, "
                               f"but the node's dim is {node.dim}: fix its dim or the data")


def _check_classes(name: str, node, value, what: str, origin: Optional[Tuple[str, torch.Tensor]]) -> None:
    """A discrete node's array: one integer class 0..K-1 per row (-1 where a partial label is missing), the first
    offending row and its value named, as the file numbers its rows where ``origin`` says."""
    k = node.dim if node.family == "categorical" else 2 ** node.dim
    low = -1 if node.role == "partial" else 0
    valid = f"integers in 0..{k - 1}" + (" (or -1 for unlabelled)" if low < 0 else "")
    if value.dim() != 1:
        raise PyroVAEError(f"model.nodes.{name}: {what}'s array {name!r} has shape {tuple(value.shape)}, but the node "
                           f"takes one class per row ({valid}): give a 1-D array of class numbers")
    if value.is_floating_point():
        bad = value != value.round()
    else:
        bad = (value < low) | (value >= k)
    if not value.numel() or not bool(bad.any()):
        if value.is_floating_point():
            raise PyroVAEError(f"model.nodes.{name}: {what}'s array {name!r} holds {value.dtype} numbers, but the "
                               f"node's classes are {valid}: store them as integers")
        return
    found = bad.nonzero()[:, 0]
    if origin is None:
        where, i = what, int(found[0])
        row = i
    else:  # the first in the file's order (a held-out split permutes the rows)
        rows = origin[1][found]
        where, i = origin[0], int(found[int(rows.argmin())])
        row = int(rows.min())
    got = value[i].item()
    missing = node.role == "input" and got == -1
    fix = ("an input is always given: fill in its missing (-1) rows, or make the node role = \"partial\"" if missing
           else "fix the data or the node's dim")
    raise PyroVAEError(f"model.nodes.{name}: {where}'s array {name!r} row {row} has {got:g}: the labels of "
                       f"{name!r} must be {valid}: {fix}")
