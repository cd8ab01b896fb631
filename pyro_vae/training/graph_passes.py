"""Exact rewrites of a recorded step's ATen graph: repeated subexpressions computed once, a costly elementwise
function of a broadcast tensor computed before the broadcast, and an added negation made a subtraction.

Why.  Pyro's distributions broadcast their parameters against the value they
score (``broadcast_all``), so a per-feature parameter enters a count law's
``log_prob`` as a (rows, features) view of a (features,) tensor: torch then
computes ``lgamma(theta)`` (and, backwards, ``digamma(theta)``) once per row,
and the negative binomial recomputes ``theta + x`` and the zero-inflated law
``-gate_logits``, which the same step already has.  The recorded graph says
all of this; these passes remove the repeats.

Exact.  Each pass replaces a node by one that computes the same values from
the same inputs with the same kernel:
* a subexpression is merged only with an identical call of a deterministic op
  (no random draws, no fresh uninitialized memory), neither of them written
  in place later;
* ``f(expand(t))`` becomes ``expand(f(t))`` only for the functions in
  :data:`HOISTED`, each computed by one scalar function per element, so every
  value is the one the row-by-row call gave, and only where ``t`` keeps the
  last dimension (the broadcast adds or widens leading ones);
* ``a + (-b)`` becomes ``a - b`` (autograd's backward formulas negate often),
  one rounding of the same exact difference.
The callers run these passes only on graphs that write nothing in place other
than fresh tensors (``_torch_private.simplify`` checks it first), and no node
written in place is merged or replaced, so a value is never changed between
its uses.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch

_aten = torch.ops.aten

#: elementwise functions computed by one scalar function per element (no vectorized approximation that could
#: give another value where the loop splits differently), whose cost makes a per-row recomputation worth removing
HOISTED = {_aten.lgamma.default, _aten.digamma.default}

#: ops that must never be merged although their schema is not mutable: fresh memory that later nodes fill in place
_FRESH_MEMORY = {_aten.empty.memory_format, _aten.empty_like.default, _aten.empty_strided.default,
                 _aten.new_empty.default, _aten.new_empty_strided.default}
_NONDETERMINISTIC = (torch.Tag.nondeterministic_seeded, torch.Tag.nondeterministic_bitwise)


def _written_in_place(node: torch.fx.Node) -> bool:
    return any(isinstance(u.target, torch._ops.OpOverload) and u.target._schema.is_mutable and u.args
               and u.args[0] is node for u in node.users)


def _mergeable(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or _written_in_place(node):
        return False
    if node.target is operator.getitem:
        return True
    op = node.target
    if not isinstance(op, torch._ops.OpOverload) or op in _FRESH_MEMORY or op._schema.is_mutable:
        return False
    return not any(tag in op.tags for tag in _NONDETERMINISTIC)


def _key(value):
    """A hashable form of a node's argument: nodes by identity, constants with their type (1 and 1.0 differ)."""
    if isinstance(value, torch.fx.Node):
        return ("node", id(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _key(v)) for k, v in value.items())))
    if isinstance(value, float) and value != value:  # NaN != NaN: never merge on it
        return ("nan", id(value))
    try:
        hash(value)
    except TypeError:
        return ("unhashable", id(value))
    return (type(value).__name__, value)


def merge_repeats(graph: torch.fx.Graph) -> int:
    """Common subexpressions merged: a later identical call's users read the first one's result. Returns how many."""
    seen = {}
    merged = 0
    for node in list(graph.nodes):
        if not _mergeable(node):
            continue
        key = (node.target, _key(node.args), _key(node.kwargs))
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        node.replace_all_uses_with(first)
        graph.erase_node(node)
        merged += 1
    return merged


def _shape(node) -> Optional[tuple]:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def hoist_over_broadcast(graph: torch.fx.Graph) -> int:
    """``f(expand(t, shape))`` -> ``expand(f(t), shape)`` for f in :data:`HOISTED`. Returns how many."""
    hoisted = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in HOISTED or len(node.args) != 1 or node.kwargs \
                or _written_in_place(node):
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.target is not _aten.expand.default:
            continue
        small, big = _shape(src.args[0]), _shape(src)
        if small is None or big is None or not small or small[-1] != big[-1] or len(small) > len(big):
            continue
        with graph.inserting_before(node):
            inner = graph.call_function(node.target, (src.args[0],))
            outer = graph.call_function(_aten.expand.default, (inner, list(big)))
        val = src.args[0].meta.get("val")
        if isinstance(val, torch.Tensor):
            inner.meta["val"] = torch.empty_like(val)
        outer.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(outer)
        graph.erase_node(node)
        hoisted += 1
    return hoisted


def _negated(value) -> Optional[torch.fx.Node]:
    """What ``value`` negates, when it is a ``neg`` node."""
    if isinstance(value, torch.fx.Node) and value.op == "call_function" and value.target is _aten.neg.default:
        return value.args[0]
    return None


def fold_negations(graph: torch.fx.Graph) -> int:
    """``a + (-b)`` and ``(-b) + a`` -> ``a - b``; ``-(-a)`` -> ``a``. Returns how many.

    Exact: negation is exact and IEEE subtraction is addition of the negation, one rounding either way (torch's
    ``sub`` is its ``add`` with alpha -1, computed as ``a + (-1) * b``)."""
    folded = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is _aten.neg.default and _negated(node.args[0]) is not None and not _written_in_place(node):
            node.replace_all_uses_with(_negated(node.args[0]))
            graph.erase_node(node)
            folded += 1
            continue
        if node.target is not _aten.add.Tensor or len(node.args) != 2 or node.kwargs:
            continue
        a, b = node.args
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        if _negated(b) is not None:
            node.target, node.args = _aten.sub.Tensor, (a, _negated(b))
        elif _negated(a) is not None:
            node.target, node.args = _aten.sub.Tensor, (b, _negated(a))
        else:
            continue
        folded += 1
    return folded


def rewrite(graph: torch.fx.Graph) -> None:
    """The passes, repeats first (a merged broadcast is then hoisted once)."""
    merge_repeats(graph)
    hoist_over_broadcast(graph)
    fold_negations(graph)
    merge_repeats(graph)  # two hoisted copies of one function of one tensor are one
