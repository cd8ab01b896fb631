"""``sample --given NAME=VALUE``: what a run may be conditioned on (its labels and inputs), and each value checked against it.

A graph says it node by node: a categorical or bernoulli input or partial
label takes one class 0..K-1 (K = its dim, 2^dim bits), a real input a row of
its dim numbers.  A program of your own says it through its named arrays: an
integer array is a label whose classes are those its data hold (0..max), a
floating (rows, K) array a one-hot label (an integer picks the class) or a row
of K numbers, a one-column array a number.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from ..errors import PyroVAEError, did_you_mean

__all__ = ["Slot", "given_values", "slots", "check_given", "given_text", "given_slug", "latent_names"]


@dataclass(frozen=True)
class Slot:
    """What one name may be given: a label of ``classes`` classes, or a row of ``width`` numbers (or both: a
    one-hot label takes either)."""

    name: str
    what: str  # how a message names it: "node 'y'", "array 'y'"
    classes: Optional[int] = None
    width: Optional[int] = None


def given_values(items: Sequence[str]) -> Dict[str, object]:
    """``--given name=value`` strings as {name: value}: TOML literals (3, 0.5, [0, 1]), other text as a string, which
    :func:`check_given` then refuses naming what the name takes."""
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise PyroVAEError(f"--given {item!r}: expected NAME=VALUE, e.g. --given y=3")
        try:
            out[name] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[name] = raw.strip()
    return out


def slots(model, arrays, observed: Optional[str]) -> Dict[str, Slot]:
    """What each name of the run may be given: a graph's input and partial nodes, else its named arrays but the
    observations (``arrays``: the run's training arrays, or None for one array)."""
    graph = getattr(model, "graph", None)
    out = {}
    if graph is not None:
        for name in graph.order:
            node = graph.nodes[name]
            if node.role not in ("input", "partial"):
                continue
            if node.family in ("categorical", "bernoulli"):
                k = node.dim if node.family == "categorical" else 2 ** node.dim
                out[name] = Slot(name, f"node {name!r}", classes=int(k))
            else:
                out[name] = Slot(name, f"node {name!r}", width=int(node.dim))
        return out
    for name, t in (arrays or {}).items():
        if name == observed:
            continue
        if not t.is_floating_point() and t.dim() == 1:
            labels = t[t >= 0]
            out[name] = Slot(name, f"array {name!r}", classes=int(labels.max()) + 1 if labels.numel() else 1)
        elif t.dim() == 2 and t.is_floating_point():
            out[name] = Slot(name, f"array {name!r}", classes=int(t.shape[1]), width=int(t.shape[1]))
        else:
            out[name] = Slot(name, f"array {name!r}", width=int(t[0].numel()))
    return out


def check_given(values: Dict[str, object], allowed: Dict[str, Slot], latent: Sequence[str] = (),
                observed: Optional[str] = None) -> None:
    """One line naming the name, what it takes and the fix for the first value that does not fit."""
    for name, value in values.items():
        if name == observed:
            raise PyroVAEError(f"--given {name}: {name!r} holds the observations, which sample draws; "
                               f"give a label or an input instead ({', '.join(allowed) or 'this run has none'})")
        if name in latent:
            raise PyroVAEError(f"--given {name}: {name!r} is a latent node, which sample draws from its prior; "
                               f"--given takes a label or an input ({', '.join(allowed) or 'this run has none'})")
        if name not in allowed:
            same = [a for a in allowed if a.lower() == name.lower()]
            hint = f"did you mean {same[0]!r}? " if same else did_you_mean(name, allowed)
            raise PyroVAEError(f"--given {name}: the run has no label or input {name!r}: {hint}"
                               f"valid: {', '.join(allowed) or 'none (drop --given)'}")
        _check_value(allowed[name], value)


def _check_value(slot: Slot, value) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if slot.classes is not None and (slot.width is None or is_int):
        if not is_int or not 0 <= value < slot.classes:
            raise PyroVAEError(f"--given {slot.name}={value!r}: {slot.what} is a label with K = {slot.classes} "
                               f"classes: give an integer in 0..{slot.classes - 1}")
        return
    row = value if isinstance(value, list) else [value]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
    if not numbers or len(row) != slot.width:
        zeros = ", ".join(["0.0"] * min(slot.width, 3)) + (", ..." if slot.width > 3 else "")
        example = "a number" if slot.width == 1 else f"a TOML list of {slot.width} numbers, e.g. [{zeros}]"
        also = f", or an integer class in 0..{slot.classes - 1}" if slot.classes is not None else ""
        raise PyroVAEError(f"--given {slot.name}={value!r}: {slot.what} takes a row of {slot.width} "
                           f"number{'s' if slot.width != 1 else ''}: give {example}{also}")


def given_text(values: Dict[str, object]) -> str:
    """``y = 3, u = [0.5, 1]``: what a sample was conditioned on, for titles and messages."""
    return ", ".join(f"{k} = {_plain(v)}" for k, v in values.items())


def given_slug(values: Dict[str, object]) -> str:
    """``y3`` / ``y3-u0.5_1``: the given values as a file-name part (long rows by their hash)."""
    parts = []
    for k, v in values.items():
        text = "_".join(_plain(x) for x in v) if isinstance(v, list) else _plain(v)
        text = re.sub(r"[^A-Za-z0-9._-]", "", text)
        if len(text) > 24:
            text = "h" + hashlib.sha256(repr(v).encode()).hexdigest()[:8]
        parts.append(f"{k}{text}")
    return "-".join(parts)


def _plain(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def latent_names(model) -> Sequence[str]:
    """The latent nodes of a graph (or a program's latent sites), which --given cannot set."""
    graph = getattr(model, "graph", None)
    if graph is not None:
        return [n for n in graph.order if graph.nodes[n].role == "latent"]
    return list(getattr(model, "latent_sites", ()) or ())
