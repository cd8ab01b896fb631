"""The ``[model]`` section's three forms: the one-latent keys desugared into a graph, nodes, or a program.

The one-latent form (``latent_dim``, ``prior``, ``likelihood``, ...) is sugar:
:func:`desugar` turns it into the graph {z: a root latent, x: observed,
parents [z]} before anything is built, so the VAE, the autoencoders and every
declared graph are one model class.  The graph keeps the form it came from
(``GraphSpec.short``), so that config.toml shows what the user wrote and an
error names the key the user wrote (:func:`key_path`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from ..errors import PyroVAEError
from ..serialize import to_plain
from .schema import GraphSpec, ModelSpec, NodeConfig, OneLatent, ProgramSpec, build, unread_count_keys

#: the nodes of a one-latent graph
LATENT, OBSERVED = "z", "x"

#: the one-latent ``prior`` values that name a root prior of a normal latent rather than its family
SHORT_ROOT_PRIORS = ("vamp", "flow")

#: (node, field) of the one-latent graph -> the one-latent key it came from
SHORT_KEYS = {
    (LATENT, "dim"): "model.latent_dim",
    (LATENT, "family"): "model.prior",
    (LATENT, "guide"): "model.guide",
    (LATENT, "rank"): "model.rank",
    (LATENT, "encoder"): "model.encoder",
    (LATENT, "prior_scale"): "model.prior_scale",
    (LATENT, "prior"): "model.prior",
    (LATENT, "flows"): "model.flows",
    (LATENT, "flow_hidden"): "model.flow_hidden",
    (LATENT, "pseudo_inputs"): "model.pseudo_inputs",
    (OBSERVED, "likelihood"): "model.likelihood",
    (OBSERVED, "scale"): "model.scale",
    (OBSERVED, "levels"): "model.levels",
    (OBSERVED, "library"): "model.library",
    (OBSERVED, "dispersion"): "model.dispersion",
    (OBSERVED, "net"): "model.decoder",
}

_SHORT = tuple(f.name for f in dataclasses.fields(OneLatent))
_GRAPH = tuple(f.name for f in dataclasses.fields(GraphSpec) if f.name != "short")
_PROGRAM = tuple(f.name for f in dataclasses.fields(ProgramSpec))


def desugar(one: OneLatent) -> GraphSpec:
    """The graph the one-latent form means: z ~ p(z), x ~ p(x | z), q(z | x)."""
    # model.sparsity = lambda is the Laplace prior's rate: -log p(z) = lambda |z|_1 + const
    prior_scale = one.prior_scale if one.sparsity is None else 1.0 / one.sparsity
    # model.prior = "vamp" / "flow" is a normal latent with that root prior
    family, prior = ("normal", one.prior) if one.prior in SHORT_ROOT_PRIORS else (one.prior, "fixed")
    z = NodeConfig(role="latent", family=family, dim=one.latent_dim, prior_scale=prior_scale, prior=prior,
                   encoder=one.encoder, guide=one.guide, flows=one.flows, flow_hidden=one.flow_hidden,
                   pseudo_inputs=one.pseudo_inputs, rank=one.rank)
    x = NodeConfig(role="observed", likelihood=one.likelihood, scale=one.scale, levels=one.levels,
                   library=one.library, dispersion=one.dispersion, parents=(LATENT,), net=one.decoder)
    return GraphSpec(nodes={LATENT: z, OBSERVED: x}, corruption=one.corruption,
                     corruption_level=one.corruption_level, contractive=one.contractive, tied=one.tied, short=one)


def key_path(spec: GraphSpec, node: str, name: str) -> str:
    """The key a user wrote for ``node``'s field ``name``: a one-latent key where the graph came from one."""
    if spec.short is not None and (node, name) in SHORT_KEYS:
        return SHORT_KEYS[(node, name)]
    return f"model.nodes.{node}.{name}"


def replace_node(spec: GraphSpec, node: str, **changes) -> GraphSpec:
    """``spec`` with ``node``'s fields changed; a one-latent spec changes its one-latent keys, so that config.toml
    (which shows that form) records the change."""
    if spec.short is not None and all((node, k) in SHORT_KEYS for k in changes):
        short = {SHORT_KEYS[(node, k)].split(".", 1)[1]: v for k, v in changes.items()}
        return desugar(dataclasses.replace(spec.short, **short))
    nodes = dict(spec.nodes)
    nodes[node] = dataclasses.replace(nodes[node], **changes)
    return dataclasses.replace(spec, nodes=nodes, short=None)


def model_spec(values: Mapping[str, Any], prefix: str = "model") -> ModelSpec:
    """The spec a ``[model]`` section declares: a program, nodes, or the one-latent form (desugared)."""
    values = dict(values)
    kind = values.pop("type", None)  # written by pyro_vae before every declared model became a graph
    if kind not in (None, "vae", "graph"):
        raise PyroVAEError(f"{prefix}.type = {kind!r}: a declared model is a graph, in the one-latent form or as "
                           f"[model.nodes.NAME] tables: remove {prefix}.type")
    if "program" in values:
        extra = next((k for k in values if k not in _PROGRAM), None)
        if extra is not None:
            raise PyroVAEError(f"{prefix}.{extra} is given together with {prefix}.program, which builds the model "
                               f"itself and does not read it: remove {prefix}.{extra} (or pass it to the program's "
                               f"constructor in [model.args])")
        return build(ProgramSpec, values, prefix)
    stray = next((k for k in values if k in _PROGRAM), None)
    if stray is not None:
        raise PyroVAEError(f"{prefix}.{stray} is given without {prefix}.program: it belongs to a model of your own "
                           f"({prefix}.program = \"module:Class\"); add {prefix}.program or remove {prefix}.{stray}")
    if "nodes" in values or kind == "graph":
        extra = next((k for k in values if k not in _GRAPH and k in _SHORT), None)
        if extra is not None:
            raise PyroVAEError(f"{prefix}.{extra} is given together with {prefix}.nodes, whose nodes carry their own "
                               f"settings: remove {prefix}.{extra} and set it on the node it belongs to "
                               f"([model.nodes.NAME])")
        return build(GraphSpec, values, prefix)
    if "guide_structure" in values:
        raise PyroVAEError(f"{prefix}.guide_structure is given without {prefix}.nodes: it shapes a graph's guide; "
                           f"declare [model.nodes.NAME] tables or remove it")
    return desugar(build(OneLatent, values, prefix))


def ModelConfig(**keys) -> ModelSpec:  # noqa: N802 - named as the section it builds, as it always was
    """The ``[model]`` section from keyword arguments, as TOML gives them: the one-latent keys (a graph
    {z, x}), ``nodes`` (a graph), or ``program`` (a model of your own).  Returns a :class:`GraphSpec` or a
    :class:`ProgramSpec`."""
    return model_spec(keys)


def _without_unread(values: Dict[str, Any]) -> Dict[str, Any]:
    """An observed node's plain keys less the count keys its likelihood does not read (in place)."""
    for key in unread_count_keys(values["likelihood"], values["dispersion"]):
        values.pop(key, None)
    return values


def spec_to_dict(spec: ModelSpec) -> Dict[str, Any]:
    """The section as config.toml holds it: a program's keys, the one-latent keys, or the nodes and options."""
    if isinstance(spec, ProgramSpec):
        return {k: v for k, v in to_plain(spec).items() if v is not None}
    if spec.short is not None:
        return _without_unread(to_plain(spec.short))
    values = to_plain(spec)
    del values["short"]
    for node in values["nodes"].values():
        if node.get("role") == "observed":  # a count key only where the likelihood reads it
            _without_unread(node)
        if node.get("over") is None:  # the time axis's keys: only a node over time records them
            for key in ("over", "transition", "rnn"):
                node.pop(key, None)
    return values
