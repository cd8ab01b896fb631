"""A graph spec checked as a whole: names, parents, cycles, roles and sizes; its ancestral and guide orders.

Every check fails in one line that names the node and the fix, before any
data is read or any network built.  The compiler (compile.py) reads the
orders off :class:`Graph` and never re-derives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from ...data.sizes import too_large
from ...errors import PyroVAEError, did_you_mean
from ..plate import PLATE

#: the most bits a bernoulli node may have: its 2**dim values are enumerated exactly
MAX_BITS = 12
#: families a node of each role may have
ROLE_FAMILIES = {
    "latent": ("normal", "laplace", "categorical", "bernoulli", "mixture", "logistic_normal"),
    "partial": ("categorical", "bernoulli"),
    "input": ("real", "categorical"),
    "observed": ("normal", "categorical", "bernoulli"),  # family is unused by observed nodes: they take a likelihood
}
DISCRETE = ("categorical", "bernoulli")
#: the suffixes of the extra sites a node adds: a mixture's component, a partial node's classifier term
COMPONENT = "_component"
CLASSIFIER = "_classifier"
#: the site suffix of a count node's latent log-library (models/counts.py, library = "latent")
LIBRARY = "_library"
#: the factor site of the contractive penalty
CONTRACTIVE = "contractive"
#: the compiled program's own keyword arguments, which a data node's array would be passed beside
PROGRAM_ARGUMENTS = ("self", "data_size")


@dataclass(frozen=True)
class Graph:
    """The checked graph: its nodes by name, in ancestral order, and the order the guide samples them in."""

    nodes: Mapping[str, object]  # name -> NodeConfig
    order: Tuple[str, ...]  # ancestral: every node after its parents
    guide_order: Tuple[str, ...]  # the latent and partial nodes, nearest the data first (discrete before continuous)
    structured: bool

    def children(self, name: str) -> List[str]:
        return [n for n in self.order if name in self.nodes[n].parents]

    def blanket(self, name: str) -> List[str]:
        """The nodes ``name`` shares a factor with: its parents, children and its children's other parents."""
        out = list(self.nodes[name].parents)
        for c in self.children(name):
            out += [c] + [p for p in self.nodes[c].parents if p != name]
        return list(dict.fromkeys(out))

    def guide_inputs(self, name: str) -> List[str]:
        """The latent nodes q(name | ...) reads besides the data: under "structured", those the guide has
        sampled before it (or that are observed there) that share a factor with it; none under mean-field."""
        if not self.structured:
            return []
        before = self.guide_order[: self.guide_order.index(name)]
        return [n for n in before if n in self.blanket(name)]

    def guide_reads(self, name: str) -> List[str]:
        """The latent nodes q(name | ...) depends on, directly or through the latents it reads."""
        if name not in self.guide_order:
            return []
        out = []
        for n in self.guide_inputs(name):
            out += [n] + self.guide_reads(n)
        return list(dict.fromkeys(out))

    def summed_inside(self, name: str) -> Optional[str]:
        """A parent of the discrete node ``name`` that the guide draws given ``name`` (None if none): the model's
        law p(name | parent) would read the very value it is summed over, which TraceEnum_ELBO cannot enumerate."""
        return next((p for p in self.nodes[name].parents if name in self.guide_reads(p)), None)

    def data_nodes(self) -> List[str]:
        """The nodes whose values come from the data (the guide's inputs): observed, partial and input."""
        return [n for n in self.order if self.nodes[n].role in ("observed", "input")]

    @property
    def discrete(self) -> List[str]:
        """Nodes the objective must sum: discrete latent and partial nodes, and mixture components."""
        return [n for n in self.order if self.nodes[n].role in ("latent", "partial")
                and self.nodes[n].family in DISCRETE + ("mixture",)]


def _fail(name: str, what: str) -> None:
    raise PyroVAEError(f"model.nodes.{name}: {what}")


def generated_sites(spec) -> Dict[str, str]:
    """The sites the compiled program adds beside its nodes' own, each with what adds it."""
    sites = {PLATE: "the data plate (pyro.plate(\"data\")) every node sits in"}
    for name, node in spec.nodes.items():
        if node.family == "mixture" and node.role == "latent":
            sites[name + COMPONENT] = f"the component site of the mixture node {name!r}"
        if node.role == "partial" and node.classifier_weight:
            sites[name + CLASSIFIER] = f"the classifier term of the partial node {name!r}"
        if node.role == "observed" and node.library == "latent":
            sites[name + LIBRARY] = f"the latent log-library of the count node {name!r}"
    if spec.contractive:
        sites[CONTRACTIVE] = "the contractive penalty's factor site (model.contractive)"
    return sites


def _clash(name: str, generated: Mapping[str, str], data: bool) -> Optional[str]:
    """What a node's name clashes with, or None: a generated site, or a name the networks cannot be stored under."""
    if name in generated:
        return f"{generated[name]} has that name"
    if name.startswith("_"):
        return "a name starting with _ is private to PyTorch's modules, which store each node's networks by name"
    if hasattr(nn.ModuleDict(), name):
        owner = "Module" if hasattr(nn.Module(), name) else "ModuleDict"
        return (f"it is an attribute of PyTorch's modules (nn.{owner}.{name}), which store each node's networks "
                "by name")
    if name in PROGRAM_ARGUMENTS and data:
        return (f"it is an argument of the compiled program, which takes a data node's array by name "
                f"(model(..., {name}=...))")
    return None


def _rename(name: str, taken) -> str:
    """A suggested name for a node whose name clashes: one that clashes with nothing declared."""
    stem = name.strip("_") or "node"
    for candidate in (f"{stem}_node", f"node_{stem}", f"{stem}_node2"):
        if candidate not in taken and not hasattr(nn.ModuleDict(), candidate):
            return candidate
    return f"{stem}_{len(taken)}_node"


def _check_name(name: str, node, generated: Mapping[str, str], names) -> None:
    if not name.isidentifier():
        _fail(name, f"{name!r} is not a Python identifier: a data node's name is the program's keyword argument "
                    "and its data array's name, so use letters, digits and _")
    data = node.role in ("observed", "input", "partial")
    clash = _clash(name, generated, data)
    if clash is not None:
        array = " (and its data array)" if data else ""
        _fail(name, f"the node name {name!r} clashes with the compiled program: {clash}: rename the node{array}, "
                    f"e.g. to {_rename(name, list(names) + list(generated))!r}")


def _check_node(name: str, node, names) -> None:
    families = ROLE_FAMILIES[node.role]
    if node.role != "observed" and node.family not in families:
        _fail(name, f"family {node.family!r} is not one a {node.role} node can have: use one of {', '.join(families)}")
    for p in node.parents:
        if p not in names:
            _fail(name, f"unknown parent {p!r}: {did_you_mean(p, names)}declared nodes: {', '.join(names)}")
        if p == name:
            _fail(name, "lists itself as a parent: a node cannot depend on itself")
    if len(set(node.parents)) != len(node.parents):
        _fail(name, "names a parent twice: list each once")
    if node.role == "input" and node.parents:
        _fail(name, "an input is always given and has no distribution, so it has no parents: "
                    "make it role = \"observed\" to model it, or remove its parents")
    if node.role == "observed" and not node.parents:
        _fail(name, "an observed node needs a likelihood given its parents, but it has none: "
                    "list the latents it depends on in parents")
    if node.role in ("latent", "partial", "input") and node.dim is None:
        what = {"categorical": "the number of classes", "bernoulli": "the number of bits"}.get(node.family, "its size")
        _fail(name, f"needs dim ({what}): set dim = N in [model.nodes.{name}]")
    for key in ("dim", "components", "levels"):
        size = getattr(node, key)
        if size is not None and size >= 1 and too_large(size):
            _fail(name, f"{key} must be {too_large(size)}")
    if node.dim is not None and node.dim < 1:
        _fail(name, f"dim must be >= 1 (got {node.dim})")
    if node.family == "categorical" and node.role != "observed" and node.dim < 2:
        _fail(name, f"a categorical node needs dim >= 2 classes (got {node.dim})")
    if node.family == "bernoulli" and node.role != "observed" and node.dim > MAX_BITS:
        _fail(name, f"a bernoulli node's 2**dim values are summed exactly: dim must be <= {MAX_BITS} (got {node.dim})")
    if node.family == "mixture":
        if node.components is None or node.components < 2:
            got = "" if node.components is None else f" (got {node.components})"
            _fail(name, f"a mixture prior needs components >= 2, the number of its Gaussian components{got}: "
                        "set components = K")
        if node.parents:
            _fail(name, "a mixture prior is a root's prior: remove its parents (or use family = \"normal\")")
    elif node.components is not None:
        _fail(name, f"components is for family = \"mixture\", but this node's family is {node.family!r}: remove it")
    _check_logistic_normal(name, node)
    if node.classifier_weight < 0:
        _fail(name, f"classifier_weight must be >= 0 (got {node.classifier_weight})")
    if node.classifier_weight and node.role != "partial":
        _fail(name, "classifier_weight weights the classifier q(y|x) on the labelled rows of a partial node: "
                    "set role = \"partial\" or remove it")
    if node.prior_scale <= 0:
        _fail(name, f"prior_scale must be > 0 (got {node.prior_scale})")
    if node.scale is not None and not isinstance(node.scale, str) and node.scale <= 0:
        _fail(name, f"scale must be a positive number, \"learned\" or \"amortized\" (got {node.scale})")
    if node.role in ("latent", "partial") and isinstance(node.scale, str) and node.scale == "learned_isotropic":
        _fail(name, "a latent's scale is \"amortized\", \"learned\" or a number")
    if node.role in ("latent", "partial") and node.net.type == "conv":
        # checked here, before any data is read: a latent's conditional network reads its parents' values, never an image
        _fail(name, "net.type = \"conv\" is for the image's decoder (an observed node) and the guide's encoders: "
                    "use type = \"mlp\" for a latent's conditional network")
    for net in ("net", "encoder"):
        cfg = getattr(node, net)
        if any(h < 1 for h in cfg.hidden) or any(c < 1 for c in cfg.channels):
            _fail(name, f"{net}: layer sizes must be >= 1")
        if too_large(max(cfg.hidden + cfg.channels, default=1)):
            _fail(name, f"{net}: layer sizes must be each {too_large(max(cfg.hidden + cfg.channels))}")
        if cfg.type == "conv" and len(cfg.channels) != 2:
            _fail(name, f"{net}.channels: a conv net has two stride-2 layers: give two channel counts")
        if cfg.type == "conv" and cfg.batchnorm:
            _fail(name, f"{net}.batchnorm normalizes an MLP's outputs, but {net}.type = \"conv\": use type = \"mlp\" "
                        "or remove batchnorm")


def _check_logistic_normal(name: str, node) -> None:
    """A logistic-normal node is proportions over dim >= 2 parts, with its prior set by ``concentration``."""
    if node.family != "logistic_normal":
        if node.concentration is not None:
            _fail(name, f"concentration is the Dirichlet prior of family = \"logistic_normal\", but this node's family "
                        f"is {node.family!r}: remove it")
        return
    if node.dim is not None and node.dim < 2:
        _fail(name, f"a logistic_normal node is proportions over dim parts: dim must be >= 2 (got {node.dim})")
    if node.concentration is not None and not 0 < node.concentration <= 1e6:
        _fail(name, f"concentration must be in (0, 1e6], the Dirichlet's alpha (got {node.concentration})")
    if node.prior_scale != 1.0:
        _fail(name, "a logistic_normal prior's scale comes from its Dirichlet concentration: remove prior_scale "
                    "(set concentration = alpha)")
    if node.concentration is not None and node.parents:
        _fail(name, "concentration sets a root's prior, but this node has parents (its law comes from them): "
                    "remove concentration")


def _ancestral(nodes) -> Tuple[str, ...]:
    """Kahn's order, ties in declaration order; a cycle fails naming its nodes."""
    order, placed = [], set()
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(p in placed for p in nodes[n].parents)]
        if not ready:
            cycle = _cycle(nodes, pending)
            raise PyroVAEError(f"model.nodes: the parents form a cycle ({' <- '.join(cycle)}, each node after its parent): a latent-variable "
                               "graph must be acyclic; remove one of these parent links")
        for n in ready:
            order.append(n)
            placed.add(n)
        pending = [n for n in pending if n not in placed]
    return tuple(order)


def _cycle(nodes, pending) -> List[str]:
    start = pending[0]
    path, seen = [start], {start}
    while True:
        nxt = next(p for p in nodes[path[-1]].parents if p in pending)
        if nxt in seen:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def _depth(nodes, order) -> Dict[str, int]:
    """Distance to the nearest observed descendant (observed nodes: 0); a node with none fails."""
    depth = {n: 0 for n in order if nodes[n].role == "observed"}
    for n in reversed(order):
        if n in depth:
            continue
        below = [depth[c] for c in order if n in nodes[c].parents and c in depth]
        if below:
            depth[n] = 1 + min(below)
    return depth


def build_graph(spec) -> Graph:
    """The checked :class:`Graph` of a model section with ``nodes``."""
    nodes = dict(spec.nodes)
    names = list(nodes)
    generated = generated_sites(spec)
    for name, node in nodes.items():
        _check_name(name, node, generated, names)
        _check_node(name, node, names)
    if not any(n.role == "observed" for n in nodes.values()):
        raise PyroVAEError("model.nodes: no node is observed: give the data's node role = \"observed\" and a likelihood")
    if not any(n.role in ("latent", "partial") for n in nodes.values()):
        raise PyroVAEError("model.nodes: no node is latent: add a latent node (role = \"latent\", dim = ...) "
                           "as a parent of the observed one")
    order = _ancestral(nodes)
    depth = _depth(nodes, order)
    # an input node whose category picks a count node's dispersion (dispersion_by, models/counts.py) is read there;
    # with dispersion = "feature-label" and no dispersion_by, the graph's categorical inputs are candidates
    read = {v.dispersion_by for v in nodes.values() if v.role == "observed" and v.dispersion_by}
    if any(v.role == "observed" and v.dispersion == "feature-label" for v in nodes.values()):
        read |= {n for n, v in nodes.items() if v.role == "input" and v.family == "categorical"}
    for n in order:
        if nodes[n].role in ("latent", "partial", "input") and n not in depth and n not in read:
            _fail(n, "no observed node depends on it, so the data says nothing about it: list it among the "
                     "parents of a node on the way to the data, or remove it")
    for n in order:
        for c in order:
            if n in nodes[c].parents and nodes[n].role == "observed" and nodes[c].role in ("latent", "partial"):
                _fail(c, f"a latent with an observed parent ({n}) is not supported: make {n} role = \"input\" "
                         "to condition on it")
    inferred = [n for n in order if nodes[n].role in ("latent", "partial")]
    # nearest the data first; among equals discrete first (M2's q(y|x) then q(z|x,y)), then as declared
    guide_order = tuple(sorted(inferred, key=lambda n: (depth[n], nodes[n].family not in DISCRETE, names.index(n))))
    graph = Graph(nodes, order, guide_order, spec.guide_structure == "structured")
    for n in guide_order:
        if nodes[n].role == "latent" and nodes[n].family in DISCRETE:
            check_summable(graph, n)
    return graph


def check_summable(graph: Graph, name: str, why: str = "it is a latent, summed out on every row") -> None:
    """One line when the discrete node ``name`` (summed out: ``why``) has a parent the guide draws given it."""
    parent = graph.summed_inside(name)
    if parent is not None:
        _fail(name, f"{why}, but its parent {parent} is drawn by the guide given {name} (q({parent} | ..., {name})), "
                    f"so p({name} | {parent}) would read the value {name} is summed over, which TraceEnum_ELBO cannot "
                    f"enumerate: set model.guide_structure = \"mean-field\" or remove {parent} from its parents")


def check_graph(spec) -> None:
    build_graph(spec)


def check_objective(spec, train) -> None:
    """A discrete node needs an objective that sums it exactly: TraceEnum_ELBO (train.elbo = "enum", or "auto",
    which chooses it for a discrete node)."""
    if train.elbo in ("enum", "auto"):
        return
    graph = build_graph(spec)
    if graph.discrete:
        name = graph.discrete[0]
        what = "its mixture component" if graph.nodes[name].family == "mixture" else "it"
        raise PyroVAEError(
            f"model.nodes.{name} is {graph.nodes[name].family} and train.elbo = {train.elbo!r} cannot sum {what} "
            "exactly: set train.elbo = \"enum\" (TraceEnum_ELBO enumerates discrete nodes)")
