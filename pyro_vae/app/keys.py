"""``pyro-vae keys [SECTION]``: every config key with its default and meaning, the registries' names, and the example configs by task.

What a new user needs to write a config: the keys come from the schema
(config/keys.py), the names a key may take from the registries the model
is built with (likelihoods, node families, guide laws, objectives,
corruptions, data sources), and a starting point from ``examples/`` by task.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..config.keys import SECTIONS, config_keys
from ..data.sources import SOURCES
from ..errors import PyroVAEError, did_you_mean
from ..infer.objectives import OBJECTIVES
from ..models.corruption import CORRUPTIONS
from ..models.graph.families import FAMILIES
from ..models.graph.guides import GUIDE_LAWS
from ..models.likelihoods import LIKELIHOODS

__all__ = ["EXAMPLES", "NAMES", "registry_names", "keys_text", "examples_text"]

#: example configs (paths in the source tree) by what a user wants to build
EXAMPLES: Dict[str, Tuple[str, ...]] = {
    "a VAE on images": ("examples/vae_digits.toml", "examples/vae_fashion_mnist.toml",
                        "examples/vae_conv_fashion_mnist.toml"),
    "real-valued data": ("examples/vae_gaussian.toml", "examples/vae_synthetic.toml"),
    "counts (scVI-like)": ("examples/counts_zinb.toml", "examples/counts_digits_poisson.toml"),
    "topics": ("examples/topics_prodlda.toml",),
    "sequences": ("examples/sequence_linear_gaussian.toml", "examples/sequence_dmm.toml",
                  "examples/sequence_pendulum.toml"),
    "richer guides": ("examples/guide_lowrank.toml", "examples/guide_fullrank.toml", "examples/guide_iaf.toml"),
    "priors": ("examples/prior_vamp.toml", "examples/prior_flow.toml", "examples/graph_mixture_prior.toml"),
    "graphs of latents": ("examples/graph_hierarchical.toml", "examples/graph_conditional.toml",
                          "examples/graph_semisupervised.toml"),
    "autoencoders": ("examples/ae_undercomplete.toml", "examples/ae_denoising.toml", "examples/ae_sparse.toml",
                     "examples/ae_contractive.toml"),
    "your own Pyro program": ("examples/own_program/cvae.toml", "examples/own_sequence/dmm.toml"),
}

#: the sections ``pyro-vae keys`` takes beyond the config's: the registries' names
NAMES = "names"


@dataclass(frozen=True)
class RegistryNames:
    """One registry's names and the keys that take them."""

    what: str
    keys: str
    names: Tuple[str, ...]


def registry_names() -> List[RegistryNames]:
    """The names each registry holds now (what a model is built from), and the keys that take them."""
    return [
        RegistryNames("likelihoods", "model.likelihood, model.nodes.NAME.likelihood", tuple(LIKELIHOODS.names())),
        RegistryNames("guide laws", "model.guide, model.nodes.NAME.guide", tuple(GUIDE_LAWS.names())),
        RegistryNames("priors", "model.prior (one-latent form)", ("normal", "laplace", "vamp", "flow")),
        RegistryNames("priors", "model.nodes.NAME.prior (a root node)", ("fixed", "learned", "vamp", "flow")),
        RegistryNames("node families", "model.nodes.NAME.family", tuple(FAMILIES.names())),
        # "auto" is no objective of its own but the choice among them, made once from the program (infer/auto.py)
        RegistryNames("objectives", "train.elbo", ("auto",) + tuple(n for n in OBJECTIVES.names() if n != "auto")),
        RegistryNames("corruptions", "model.corruption", tuple(CORRUPTIONS.names())),
        RegistryNames("data sources", "data.source", tuple(SOURCES.names())),
    ]


def examples_text(width: int = 100) -> str:
    """The example configs by task, one task a line (``--help``'s epilog and the end of ``pyro-vae keys``)."""
    lines = ["example configs (in the source tree's examples/), by task:"]
    for task, files in EXAMPLES.items():
        lines += textwrap.wrap(", ".join(files), width, initial_indent=f"  {task + ':':<24}",
                               subsequent_indent=" " * 26)
    return "\n".join(lines)


def _wrap(text: str, indent: int, width: int) -> List[str]:
    return textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * indent)


def keys_text(section: Optional[str] = None, width: int = 100) -> str:
    """What ``pyro-vae keys [SECTION]`` prints: each key of the section (None: all) as ``key = default``, its
    values when they are a fixed set, and its meaning; the registries' names under "names"."""
    sections = list(SECTIONS) + [NAMES]
    if section is not None and section not in sections:
        raise PyroVAEError(f"unknown config section {section!r}: {did_you_mean(section, sections)}"
                           f"valid: {', '.join(sections)}")
    out: List[str] = []
    for name in ([section] if section else list(SECTIONS)):
        if name == NAMES:
            continue
        table, cls = SECTIONS[name]
        head = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "")
        out += [f"[{table}]  {head}" if table == name else f"[{table}]  ({name}) {head}"]
        for k in config_keys(name):
            out.append(f"  {k.key} = {k.default}")
            if k.choices:
                out += _wrap("one of: " + ", ".join(k.choices), 6, width)
            out += _wrap(k.meaning, 6, width)
        out.append("")
    if section in (None, NAMES):
        out.append("names the model is built from (checked when it is built, with \"did you mean\"):")
        for r in registry_names():
            out += _wrap(f"{r.what} ({r.keys}): {', '.join(r.names)}", 2, width)
        out.append("")
    if section is None:
        out.append(examples_text(width))
    return "\n".join(out).rstrip() + "\n"
