"""Every config key a TOML file may set, with its default, its allowed values and its meaning, read off the schema.

The schema (config/schema.py) documents a key by the comment above it or on
its line (``TrainConfig``: by its docstring's list); :func:`config_keys` reads
those comments from the source, so ``pyro-vae keys`` says what the schema
says and cannot drift from it.  A key the schema leaves uncommented takes
its meaning from :data:`MEANINGS` (a test checks that every key has one).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..errors import PyroVAEError, did_you_mean
from .schema import DataConfig, EvalConfig, GraphSpec, NodeConfig, OneLatent, ProgramSpec, TrainConfig

__all__ = ["KeyDoc", "SECTIONS", "MEANINGS", "config_keys"]


@dataclass(frozen=True)
class KeyDoc:
    """One config key: its dotted path, its default as TOML would write it, the values it takes (a fixed set's
    names, or empty) and its meaning."""

    key: str
    default: str
    choices: Tuple[str, ...]
    meaning: str


#: the sections ``pyro-vae keys SECTION`` takes: the TOML table each lists, and the record behind it
SECTIONS: Dict[str, Tuple[str, type]] = {
    "data": ("data", DataConfig),
    "model": ("model", OneLatent),  # the one-latent form: a VAE or autoencoder in a few keys
    "graph": ("model", GraphSpec),  # a declared graph: [model] keys beside [model.nodes.NAME]
    "nodes": ("model.nodes.NAME", NodeConfig),
    "program": ("model", ProgramSpec),
    "train": ("train", TrainConfig),
    "evaluate": ("evaluate", EvalConfig),
}

#: meanings of the keys the schema leaves without a comment, by the record's name and the field's
MEANINGS: Dict[Tuple[str, str], str] = {
    ("NetConfig", "hidden"): "the hidden layers' sizes ([] : one linear map)",
    ("NetConfig", "activation"): "the hidden layers' activation function",
    ("NetConfig", "type"): "\"mlp\", or \"conv\" for image data: two stride-2 convolutions, then the MLP",
    ("NetConfig", "channels"): "type = \"conv\": the two convolutions' channels",
    ("TransitionConfig", "type"): "\"gated\" (the deep Markov model's gated network) or \"linear\" "
                                  "(z_t = A z_{t-1} + B u_t + b plus Gaussian noise)",
    ("TransitionConfig", "hidden"): "the gated transition's hidden sizes",
    ("TransitionConfig", "activation"): "the gated transition's activation function",
    ("RNNConfig", "type"): "the guide's backward recurrent network: \"gru\" or \"lstm\"",
    ("RNNConfig", "hidden"): "the recurrent network's state size",
    ("RNNConfig", "layers"): "the recurrent network's stacked layers",
    ("NodeConfig", "parents"): "the nodes this node is drawn given (its network reads their values)",
    ("OneLatent", "latent_dim"): "the latent z's dimension",
    ("OneLatent", "likelihood"): "p(x | z): a name in the likelihoods listed below",
    ("OneLatent", "encoder"): "the guide's network q(z | x)",
    ("OneLatent", "decoder"): "the model's network from z to the likelihood's parameters",
    ("GraphSpec", "corruption"): "as model.corruption of the one-latent form (a denoising autoencoder)",
    ("GraphSpec", "corruption_level"): "as model.corruption_level of the one-latent form",
    ("GraphSpec", "contractive"): "as model.contractive of the one-latent form (a one-latent graph only)",
    ("GraphSpec", "tied"): "as model.tied of the one-latent form (a one-latent graph only)",
    ("ProgramSpec", "args"): "keyword arguments the program's class is built with (a TOML table)",
    ("DataConfig", "source"): "a built-in data source, a name in the sources listed below",
    ("DataConfig", "test"): "held-out rows as train's files (None: data.test_fraction of train's rows)",
    ("DataConfig", "test_fraction"): "the share of rows held out for testing when there is no data.test",
    ("OneLatent", "dispersion"): "negative_binomial / zinb: the inverse dispersion theta, learned per \"feature\", "
                                 "per feature and label (\"feature-label\") or \"amortized\" (from z)",
    ("EvalConfig", "iw_samples"): "importance samples per test point behind the final log p(x): a count, \"auto\" "
                                  "(chosen when the run starts) or \"none\" (no log p(x))",
    ("DataConfig", "binarize"): "0/1 data for a Bernoulli likelihood: \"static\" (thresholded once), \"dynamic\" "
                                "(drawn each epoch), \"none\", or \"auto\" (static for images under bernoulli)",
}

#: keys a user never writes: the run records them (store/trust.py), or the one-latent form is kept through them
_RECORDED = {("ProgramSpec", "program_file"), ("ProgramSpec", "program_sha256"), ("GraphSpec", "short"),
             ("GraphSpec", "nodes")}

_FIELD = re.compile(r"^    (\w+)\s*:")
_BULLET = re.compile(r"^\s*- ``(\w+)``: (.*)$")


def _comments(cls: type) -> Dict[str, str]:
    """field name -> the comment above the field (its whole block) or on its line, from ``cls``'s source."""
    out: Dict[str, str] = {}
    block: List[str] = []
    shared = ""  # a block comment over a group of fields speaks for the uncommented fields right after it
    for line in inspect.getsource(cls).splitlines()[1:]:
        if line.startswith("    def "):
            break
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            block = [] if text.startswith("--") else block + [text]  # "-- flows --" heads a group, says no key
            continue
        m = _FIELD.match(line)
        if m:
            inline = line.split("#", 1)[1] if "#" in line else ""
            inline = re.sub(r"type:\s*ignore\[[^\]]*\]", "", inline).strip(" #")
            own = " ".join(block + ([inline] if inline else [])).strip()
            out[m.group(1)] = own or shared
            shared = " ".join(block) if block else (shared if not own else "")
        elif not stripped:
            shared = ""
        block = []
    return out


def _docstring_bullets(cls: type) -> Dict[str, str]:
    """field name -> its entry in the docstring's ``- ``key``: text`` list (TrainConfig's form)."""
    out: Dict[str, str] = {}
    current = None
    for line in (cls.__doc__ or "").splitlines():
        m = _BULLET.match(line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith("      "):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def _plain(text: str) -> str:
    return text.replace("``", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        v = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}"
    return repr(v)


def _choices(tp) -> Tuple[str, ...]:
    """The names a field takes when its type is a fixed set of strings (or that or None); else empty."""
    args = [a for a in (typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)) if a is not type(None)]
    if args and all(typing.get_origin(a) is typing.Literal for a in args):
        return tuple(str(v) for a in args for v in typing.get_args(a))
    return ()


def _keys_of(cls: type, prefix: str) -> List[KeyDoc]:
    hints = typing.get_type_hints(cls)
    comments, bullets = _comments(cls), _docstring_bullets(cls)
    out: List[KeyDoc] = []
    for f in dataclasses.fields(cls):
        if (cls.__name__, f.name) in _RECORDED:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):  # a nested table: its keys under this one's name
            own = comments.get(f.name) or MEANINGS.get((cls.__name__, f.name), "")
            for k in _keys_of(tp, f"{prefix}.{f.name}"):
                out.append(dataclasses.replace(k, meaning=f"{own}: {k.meaning}" if own else k.meaning)
                           if k.key == f"{prefix}.{f.name}.hidden" else k)
            continue
        meaning = (MEANINGS.get((cls.__name__, f.name)) or _plain(bullets.get(f.name, ""))
                   or comments.get(f.name, ""))
        out.append(KeyDoc(f"{prefix}.{f.name}", _default(f), _choices(tp), meaning))
    return out


def config_keys(section: Optional[str] = None) -> List[KeyDoc]:
    """Every key of ``section`` (a name in :data:`SECTIONS`; None: all of them), in the schema's order.
    An unknown section is a :class:`PyroVAEError` with "did you mean"."""
    if section is not None and section not in SECTIONS:
        raise PyroVAEError(f"unknown config section {section!r}: {did_you_mean(section, list(SECTIONS))}"
                           f"valid: {', '.join(SECTIONS)}")
    names = [section] if section else list(SECTIONS)
    return [k for name in names for k in _keys_of(SECTIONS[name][1], SECTIONS[name][0])]
