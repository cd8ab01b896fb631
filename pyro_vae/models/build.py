"""A declared model from its spec: names checked against the registries, the graph checked, its size counted, built.

:func:`check_spec` runs before any data is read: every name the spec uses
(likelihoods, families, guide laws, corruptions) is looked up in the registry
that defines it, with "did you mean" and the key the user wrote, and the graph
is checked as a whole.  :func:`check_size` builds the model on torch's meta
device (no memory, no random numbers drawn) and counts its parameters, so the
count is the compiler's own.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..config.schema import GraphSpec, ProgramSpec
from ..config.short import LATENT, key_path
from ..data.sizes import BYTES_PER_PARAMETER, check_fits
from ..errors import PyroVAEError, did_you_mean
from ..infer.probe import first_line
from .corruption import CORRUPTIONS
from .graph.compile import GraphModel
from .graph.families import FAMILIES
from .graph.guides import GUIDE_LAWS
from .graph.spec import DISCRETE, build_graph, check_graph
from .counts import LIKELIHOODS  # the registry with the count laws in it (counts.py registers them)

#: the families the one-latent form's ``prior`` names
SHORT_PRIORS = ("normal", "laplace")


def _known(name: str, names, key: str) -> None:
    names = list(names)
    if name not in names:
        raise PyroVAEError(f"{key}: unknown name {name!r}: {did_you_mean(name, names)}valid: {', '.join(names)}")


def check_names(spec: GraphSpec) -> None:
    """Every registry name the spec uses, in one line naming the key as the user wrote it."""
    for name, node in spec.nodes.items():
        if node.role == "observed":
            _known(node.likelihood, LIKELIHOODS.names(), key_path(spec, name, "likelihood"))
            continue
        families = SHORT_PRIORS if spec.short is not None and name == LATENT else FAMILIES.names()
        _known(node.family, families, key_path(spec, name, "family"))
        _known(node.guide, GUIDE_LAWS.names(), key_path(spec, name, "guide"))
        if node.guide != "normal" and (node.role != "latent" or node.family in DISCRETE):
            raise PyroVAEError(f"{key_path(spec, name, 'guide')} = {node.guide!r}: a guide law is for a continuous "
                               f"latent, but this node is {node.role} {node.family!r}: remove it")
    _known(spec.corruption, CORRUPTIONS.names(), "model.corruption")
    problem = CORRUPTIONS[spec.corruption].check_level(spec.corruption_level)
    if problem:
        raise PyroVAEError(f"model.corruption_level = {spec.corruption_level!r}: {problem}")


def check_spec(spec) -> None:
    """A declared model's names and graph, before any data is read (a program is checked when it is built)."""
    if isinstance(spec, ProgramSpec):
        return
    check_names(spec)
    check_graph(spec)


def build_model(spec: GraphSpec, data_dim: int, image_shape=None) -> GraphModel:
    """The model a declared spec describes (the one-latent form is a graph too), for ``data_dim`` columns.

    ``image_shape``: the data's (height, width) where the source knows it (conv networks need it).
    """
    if not isinstance(spec, GraphSpec):
        raise PyroVAEError(f"build_model builds declared models; {type(spec).__name__} is not one (a program of your "
                           "own is built from its import path: pv.train, or models/program.py)")
    check_spec(spec)
    return GraphModel(spec, data_dim, image_shape)


#: where a graph model's parameters live -> the node's key that sizes them
_PARTS = {"nets": "net", "encoders": "encoder", "likelihoods": "likelihood", "families": "dim"}
#: bytes a training step keeps per activation value: the float32 value (kept for the backward pass) and its gradient
BYTES_PER_ACTIVATION = 8


def _part_key(spec: GraphSpec, part: str, node: str) -> str:
    """The key that sizes a node's parameters in ``part`` (a mixture's means and scales: its components)."""
    if part == "families" and spec.nodes[node].family == "mixture":
        return "components"
    return _PARTS[part]


def _enumerated(node) -> int:
    """How many values a node takes at once in a step: a discrete latent or label is enumerated, else 1."""
    if node.role in ("latent", "partial") and node.family == "categorical":
        return int(node.dim)
    if node.role in ("latent", "partial") and node.family == "bernoulli":
        return 2 ** int(node.dim)
    return 1


def _step_values(model: GraphModel, spec: GraphSpec, batch_size: int) -> Tuple[int, str]:
    """A lower bound of the activation values one training step holds, and the key behind most of them.

    Each network's layer outputs for a batch, times the values of the discrete nodes it reads (which
    TraceEnum_ELBO enumerates), and each mixture's means and scales gathered per component and row.
    """
    g = model.graph
    parts = [(0, "the data's columns")]
    for kind, nets, inputs in (("net", model.nets, lambda n: g.nodes[n].parents),
                               ("encoder", model.encoders, g.guide_inputs)):
        for name, net in nets.items():
            width = sum(m.out_features for m in net.modules() if isinstance(m, nn.Linear))
            times = math.prod(_enumerated(g.nodes[p]) for p in inputs(name))
            parts.append((batch_size * width * times, key_path(spec, name, kind)))
    for name, node in g.nodes.items():
        if node.role == "latent" and node.family == "mixture":
            parts.append((2 * batch_size * int(node.components) * int(node.dim), key_path(spec, name, "components")))
    return sum(n for n, _ in parts), max(parts)[1]


def _on_meta(spec: GraphSpec, data_dim: int, image_shape) -> GraphModel:
    """The model built on torch's meta device: its shapes, and no memory."""
    try:
        with torch.device("meta"):
            return build_model(spec, data_dim, image_shape)
    except (RuntimeError, OverflowError) as e:  # a product of sizes beyond torch's int64 shapes
        raise PyroVAEError(f"the model's sizes cannot fit in memory: torch cannot even describe its tensors "
                           f"({first_line(e)[:120]}): use smaller sizes") from None


def check_size(spec: GraphSpec, data_dim: int, image_shape=None, memory: Optional[int] = None,
               batch_size: Optional[int] = None) -> None:
    """Refuse, in one line, a model whose parameters (with gradients and Adam state) and, given ``batch_size``,
    a training step's activations cannot fit in the memory this machine has available."""
    model = _on_meta(spec, data_dim, image_shape)
    params = list(model.named_parameters())
    count = sum(p.numel() for _, p in params)
    name, largest = max(params, key=lambda kv: kv[1].numel()) if params else ("?", None)
    part, _, rest = name.partition(".")
    node = rest.partition(".")[0]
    where = key_path(spec, node, _part_key(spec, part, node)) if part in _PARTS and node in spec.nodes \
        else "the data's columns"
    if largest is not None and largest.dim() == 2:
        where += f" (a {largest.shape[0]:,} x {largest.shape[1]:,} weight)"
    what = f"the model ({count:,} parameters, mostly from {where}) with its gradients and optimizer state"
    nbytes = count * BYTES_PER_PARAMETER
    fix = "use smaller sizes"
    if batch_size is not None:
        values, most = _step_values(model, spec, batch_size)
        nbytes += values * BYTES_PER_ACTIVATION
        what += f", and a training step's {values:,} activations (a batch of {batch_size:,} rows, mostly from {most}),"
        fix += " or a smaller train.batch_size"
    check_fits(nbytes, what, fix, memory)


def check_size_before_data(spec: GraphSpec) -> None:
    """:func:`check_size` before the data is read, on one data column: a model whose parameters cannot fit even
    then is refused before any data is loaded (conv nets need the images' shape, and a categorical likelihood
    without levels the data's largest value: those wait for the data)."""
    nodes = spec.nodes.values()
    if any(net.type == "conv" for node in nodes for net in (node.net, node.encoder)) or any(
            node.role == "observed" and node.likelihood == "categorical" and node.levels is None for node in nodes):
        return
    # the data's node at its declared width, else one column: a lower bound on what the data will ask
    g = build_graph(spec)
    obs = next(n for n in g.order if g.nodes[n].role == "observed")
    check_size(spec, int(g.nodes[obs].dim or 1))


def describe(spec) -> dict:
    """What a report's runs table says of a model: its guide, prior, likelihood and latent size (None where a
    program's own business)."""
    if isinstance(spec, ProgramSpec):
        return {"program": spec.program, "guide": None, "prior": None, "likelihood": None, "latent_dim": None}
    latents = {n: node for n, node in spec.nodes.items() if node.role == "latent"}
    observed = next(node for node in spec.nodes.values() if node.role == "observed")
    if len(latents) == 1:
        (node,) = latents.values()
        guide, prior = node.guide, node.family
    else:
        guide = spec.guide_structure
        prior = ", ".join(f"{n}: {node.family}" for n, node in latents.items())
    return {"guide": guide, "prior": prior, "likelihood": observed.likelihood,
            "latent_dim": sum(int(node.dim) for node in latents.values())}
