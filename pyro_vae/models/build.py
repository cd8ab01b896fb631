"""A declared model from its spec: names checked against the registries, the graph checked, its size counted, built.

:func:`check_spec` runs before any data is read: every name the spec uses
(likelihoods, families, guide laws, corruptions) is looked up in the registry
that defines it, with "did you mean" and the key the user wrote, and the graph
is checked as a whole.  :func:`check_size` builds the model on torch's meta
device (no memory, no random numbers drawn) and counts its parameters, so the
count is the compiler's own.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config.schema import GraphSpec, ProgramSpec
from ..config.short import LATENT, key_path
from ..data.sizes import BYTES_PER_PARAMETER, check_fits
from ..errors import PyroVAEError, did_you_mean
from .corruption import CORRUPTIONS
from .graph.compile import GraphModel
from .graph.families import FAMILIES
from .graph.guides import GUIDE_LAWS
from .graph.spec import DISCRETE, check_graph
from .likelihoods import LIKELIHOODS

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


def check_size(spec: GraphSpec, data_dim: int, image_shape=None, memory: Optional[int] = None) -> None:
    """Refuse, in one line, a model whose parameters (with gradients and Adam state) cannot fit in memory."""
    with torch.device("meta"):
        model = build_model(spec, data_dim, image_shape)
    params = list(model.named_parameters())
    count = sum(p.numel() for _, p in params)
    name, largest = max(params, key=lambda kv: kv[1].numel()) if params else ("?", None)
    part, _, rest = name.partition(".")
    node = rest.partition(".")[0]
    where = key_path(spec, node, _PARTS[part]) if part in _PARTS and node in spec.nodes else "the data's columns"
    if largest is not None and largest.dim() == 2:
        where += f" (a {largest.shape[0]:,} x {largest.shape[1]:,} weight)"
    check_fits(count * BYTES_PER_PARAMETER,
               f"the model ({count:,} parameters, mostly from {where}) with its gradients and optimizer state",
               "use smaller sizes", memory)


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
