"""The flow and learned-prior keys of a node checked: ``flows``, ``flow_hidden``, ``prior = "vamp"/"flow"``, ``pseudo_inputs``.

Each problem is one line naming the key as the user wrote it (``key(node,
field)``: a one-latent key or ``model.nodes.NAME.field``) and the fix, before
any data is read; only ``pseudo_inputs`` against the training rows waits for
the data (:func:`check_pseudo_inputs`).
"""

from __future__ import annotations

from typing import Callable

from ...errors import PyroVAEError
from .spec import DISCRETE, Graph
from .priors import DEFAULT_PSEUDO_INPUTS

#: the guide laws that are flows (flows.py)
FLOW_GUIDES = ("iaf", "spline")
#: the root priors that only a continuous root latent takes
LEARNED_ROOT_PRIORS = ("vamp", "flow")

Key = Callable[[str, str], str]


def check_flow_keys(graph: Graph, key: Key) -> None:
    """Every node's flow and learned-prior keys, one line for the first problem."""
    for name, node in graph.nodes.items():
        flow_guide = node.guide in FLOW_GUIDES
        if node.prior in LEARNED_ROOT_PRIORS:
            _check_root_prior(graph, name, node, key)
        if node.flows is not None and node.flows < 1:
            raise PyroVAEError(f"{key(name, 'flows')}: must be >= 1 (got {node.flows}): the number of transforms")
        for field in ("flows", "flow_hidden"):
            if getattr(node, field) is not None and not flow_guide and node.prior != "flow":
                raise PyroVAEError(
                    f"{key(name, field)} is set, but it shapes a flow guide (guide = \"iaf\" or \"spline\") or a flow "
                    f"prior (prior = \"flow\"), and this node has guide = {node.guide!r}, prior = {node.prior!r}: "
                    f"remove {field} or set guide = \"iaf\"")
        if node.flow_hidden is not None:
            dim = int(node.dim or 0)
            if not node.flow_hidden or min(node.flow_hidden) < dim:
                raise PyroVAEError(
                    f"{key(name, 'flow_hidden')} = {list(node.flow_hidden)}: an autoregressive network needs at "
                    f"least one hidden layer, each at least the latent's size ({dim}): use e.g. [{10 * dim}]")
        if node.pseudo_inputs is not None and node.prior != "vamp":
            raise PyroVAEError(f"{key(name, 'pseudo_inputs')} is set, but only a VampPrior reads it and this node has "
                               f"prior = {node.prior!r}: remove it or set prior = \"vamp\"")
        if node.pseudo_inputs is not None and node.pseudo_inputs < 1:
            raise PyroVAEError(f"{key(name, 'pseudo_inputs')}: must be >= 1 (got {node.pseudo_inputs})")


def _check_root_prior(graph: Graph, name: str, node, key: Key) -> None:
    what = f"{key(name, 'prior')} = {node.prior!r}"
    if node.role != "latent" or node.family in DISCRETE or node.family == "mixture":
        raise PyroVAEError(f"{what}: a learned prior of this kind is for a continuous latent (normal or laplace), but "
                           f"this node is {node.role} {node.family!r}: use prior = \"fixed\" or \"learned\"")
    if node.parents:
        raise PyroVAEError(f"{what} is a root's prior, but this node has parents ({', '.join(node.parents)}), whose "
                           f"network gives its law: remove its parents or the prior")
    if node.prior != "vamp":
        return
    if node.guide == "delta":
        raise PyroVAEError(f"{what} is a mixture of the node's guide at learned inputs, but its guide is a point mass "
                           f"(guide = \"delta\"), which has no density: use guide = \"normal\" or prior = \"fixed\"")
    latents = graph.guide_inputs(name)
    if latents:
        raise PyroVAEError(f"{what} evaluates q({name} | data) at pseudo-inputs, but this guide also reads "
                           f"{', '.join(latents)}: set model.guide_structure = \"mean-field\" or use prior = \"flow\"")


def check_pseudo_inputs(graph: Graph, key: Key, train_rows: int) -> None:
    """A VampPrior's pseudo-inputs against the training rows: more of them than rows is a typo, or overfits."""
    for name, node in graph.nodes.items():
        if node.prior != "vamp":
            continue
        count = node.pseudo_inputs or DEFAULT_PSEUDO_INPUTS
        if count > train_rows:
            given = f"{key(name, 'pseudo_inputs')} = {count}" if node.pseudo_inputs else \
                f"{key(name, 'pseudo_inputs')} (default {count})"
            raise PyroVAEError(f"{given} is more than the {train_rows} training rows: use at most {train_rows} "
                               f"pseudo-inputs")
