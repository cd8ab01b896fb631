"""Typed, frozen run specifications and their TOML form.

A :class:`Config` has three sections, ``data``, ``model`` and ``train``, each a
frozen dataclass.  Everything that reads a config goes through
:func:`config_from_dict`, which rejects unknown keys ("did you mean ...?"),
wrong types and out-of-range values with the dotted key path, so that a typo
never passes silently (the failure mode of options read with ``kwargs.get``).

Names that live in a registry (likelihoods, priors, guides, objectives, data
sources, model types) are checked against that registry, so adding an entry
there is all it takes to make it valid here.
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Union

from .errors import PyroVAEError, did_you_mean
from .serialize import to_plain

ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "softplus", "leaky_relu", "sigmoid", "silu")


def _choices(fn):
    """Field metadata: the valid names come from a registry, looked up lazily."""
    return {"choices": fn}


def _likelihood_names():
    from .models.likelihoods import LIKELIHOODS

    return LIKELIHOODS.names()


def _prior_names():
    from .models.vae import PRIORS

    return PRIORS.names()


def _guide_names():
    from .models.vae import GUIDES

    return GUIDES.names()


def _objective_names():
    from .infer.objectives import OBJECTIVES

    return OBJECTIVES.names()


def _source_names():
    from .data.sources import SOURCES

    return SOURCES.names()


def _model_type_names():
    from .models import MODELS

    return MODELS.names()


def _corruption_names():
    from .models.corruption import CORRUPTIONS

    return CORRUPTIONS.names()


@dataclass(frozen=True)
class NetConfig:
    """A network: an MLP (``hidden`` sizes, ``[]`` means a single linear map) or, for image data, a small
    convolutional net (``type = "conv"``: two stride-2 layers of ``channels``, then the MLP's ``hidden``)."""

    hidden: Tuple[int, ...] = (400,)
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    type: Literal["mlp", "conv"] = "mlp"
    channels: Tuple[int, ...] = (32, 64)


#: the roles of a graph node: a latent, observed data, data observed for some rows only, a conditioning input
NODE_ROLES = ("latent", "observed", "partial", "input")


def _family_names():
    from .models.graph.families import FAMILIES

    return FAMILIES.names()


@dataclass(frozen=True)
class NodeConfig:
    """One node of a latent-variable graph (``[model.nodes.NAME]``); models/graph/spec.py checks the graph."""

    # latent: sampled by the model, inferred by the guide; observed: a data array scored by its likelihood;
    # partial: a discrete data array observed where given (labels, -1 where missing) and latent elsewhere;
    # input: a data array that is always given and only conditions (covariates, a CVAE's label)
    role: Literal[NODE_ROLES] = "latent"  # type: ignore[valid-type]
    # latent/partial/input: normal, laplace, categorical, bernoulli, mixture (latent); real (input)
    family: str = field(default="normal", metadata=_choices(_family_names))
    # size: a latent's dimension; categorical: the number of classes; bernoulli: the number of bits;
    # observed: the data's width (None: read off the data); input: the array's width (categorical: classes)
    dim: Optional[int] = None
    parents: Tuple[str, ...] = ()
    # observed nodes: the likelihood of a data row (the registry of model.likelihood)
    likelihood: str = field(default="bernoulli", metadata=_choices(_likelihood_names))
    # observed normal/laplace likelihood: as model.scale; latent normal/laplace with parents: "amortized"
    # (from the parents, the default) or "learned" (one free scale per dimension) or a fixed number
    scale: Optional[Union[float, Literal["learned", "learned_isotropic", "amortized"]]] = None
    levels: Optional[int] = None  # observed categorical likelihood: number of levels
    # roots: the prior p(node) is fixed ("fixed": N(0, prior_scale^2), uniform classes) or learned
    prior: Literal["fixed", "learned"] = "fixed"
    prior_scale: float = 1.0
    components: Optional[int] = None  # mixture: the number of Gaussian components (its component is enumerated)
    net: NetConfig = NetConfig()  # the model's conditional network from the parents
    encoder: NetConfig = NetConfig()  # the guide's network q(node | data, ...)
    # partial discrete nodes: Kingma et al.'s auxiliary weight alpha on log q(y | x) of the labelled rows
    classifier_weight: float = 0.0


def _validate_fields(obj, section: str) -> None:
    """Check a config built in Python as a TOML file is checked: every field's type, name and range.

    Numbers are normalized in place (an int where a float is expected becomes a float).
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{section}.{f.name}"
        object.__setattr__(obj, f.name, _checked(getattr(obj, f.name), hints[f.name], f, path))


def _checked(value, tp, f: dataclasses.Field, path: str):
    """``value`` for field ``f`` at ``path``: type-checked and normalized, a known name, in range."""
    value = _coerce(value, tp, path)
    choices = f.metadata.get("choices")
    # a registry name that is exactly the field's default needs no look-up: the default
    # configs are built while the registries are still being imported
    is_default = type(value) is type(f.default) and value == f.default
    if choices is not None and not is_default and value not in choices():
        names = choices()
        raise PyroVAEError(f"{path}: unknown name {value!r}: {did_you_mean(value, names)}valid: {', '.join(names)}")
    check = _RANGES.get(path)
    if check is not None and value is not None and not check[0](value):
        what = check[1](value) if callable(check[1]) else check[1]
        raise PyroVAEError(f"{path}: must be {what} (got {value!r})")
    return value


@dataclass(frozen=True)
class DataConfig:
    source: str = field(default="digits", metadata=_choices(_source_names))
    path: Optional[str] = None  # IDX directory for fashion-mnist / mnist
    train: Optional[Union[str, Dict[str, str]]] = None  # .npy / .npz / .csv, or {name = file}; implies source = "arrays"
    test: Optional[Union[str, Dict[str, str]]] = None
    # named arrays for a program's keyword arguments (model(x, y=None)); the first holds the observations
    arrays: Tuple[str, ...] = ()
    test_fraction: float = 0.1
    binarize: Literal["auto", "none", "static", "dynamic"] = "auto"
    drop_nonfinite: bool = False  # drop rows with NaN/Inf instead of failing
    split_seed: int = 0  # seeds the held-out split (independent of train.seed)
    # a labelled source (digits, fashion-mnist, mnist): the name its labels are passed under, so the
    # program gets {"x": images, labels: int64 labels}, as model(x, y=None) takes them (None: images only)
    labels: Optional[str] = None
    # the share of training rows that keep their label, balanced per class (Kingma et al. 2014's
    # semi-supervised setting); the others are -1, missing.  Test labels are always all kept.
    label_fraction: float = 1.0
    # synthetic source: x = tanh(A z + b) W + noise, z ~ N(0, I)
    num_points: int = 2000
    synthetic_dim: int = 16
    synthetic_latent_dim: int = 2
    synthetic_noise: float = 0.1

    def __post_init__(self):
        _validate_fields(self, "data")
        if self.train is not None and self.source == "digits":
            # `train = "x.npy"` alone means array data (digits is only the default source)
            object.__setattr__(self, "source", "arrays")
        _check_data_keys(self)


#: the sources that read data.path (the IDX folder)
_PATH_SOURCES = ("fashion-mnist", "mnist")


def _check_data_keys(d: "DataConfig") -> None:
    """Keys that contradict each other fail in one line naming both, instead of one being ignored."""
    for name in d.arrays + tuple(d.train if isinstance(d.train, Mapping) else ()):
        if not name.isidentifier():
            raise PyroVAEError(f"data.arrays: {name!r} is not a Python identifier: the program receives each array "
                               "as a keyword argument, so name it as the argument")
    if len(set(d.arrays)) != len(d.arrays):
        raise PyroVAEError(f"data.arrays names an array twice ({', '.join(d.arrays)}): list each once")
    if isinstance(d.train, Mapping):
        if not d.train:
            raise PyroVAEError("data.train is an empty table: give {name = \"file\"} for at least the observations")
        if d.arrays and tuple(d.train) != d.arrays:
            raise PyroVAEError(f"data.arrays = {list(d.arrays)} but data.train names {list(d.train)}: "
                               "one file per array names the arrays already; remove data.arrays")
    if d.test is not None and isinstance(d.test, Mapping) != isinstance(d.train, Mapping):
        raise PyroVAEError("data.train and data.test must both be one file or both be tables of one file per array")
    if isinstance(d.test, Mapping) and isinstance(d.train, Mapping) and set(d.test) != set(d.train):
        raise PyroVAEError(f"data.test names arrays {sorted(d.test)} but data.train {sorted(d.train)}: give the same arrays")
    if d.arrays and d.source != "arrays":
        raise PyroVAEError(f"data.arrays is given but data.source = {d.source!r}: named arrays come from files; "
                           "set data.train (a .npz or .csv file, or one file per array)")
    if d.train is not None and d.source != "arrays":
        raise PyroVAEError(
            f"data.train is given but data.source = {d.source!r}, which does not read it: "
            "remove data.source (a data.train file means source 'arrays') or remove data.train"
        )
    if d.test is not None and d.train is None:
        raise PyroVAEError(
            "data.test is given without data.train: a test file goes with a data.train file, so add data.train "
            "(other sources hold out data.test_fraction themselves) or remove data.test"
        )
    if d.path is not None and d.source not in _PATH_SOURCES:
        raise PyroVAEError(
            f"data.path is given but data.source = {d.source!r}, which does not read it (only "
            f"{' and '.join(_PATH_SOURCES)} read an IDX folder): remove data.path or set data.source"
        )
    _check_labels(d)
    if d.test is not None and d.test_fraction != _DATA_DEFAULTS["test_fraction"]:
        raise PyroVAEError(
            "data.test_fraction is given together with data.test, which is the held-out data already: "
            "remove one of them"
        )


def _check_labels(d: "DataConfig") -> None:
    """data.labels is a keyword a program can take, for a source that has labels; label_fraction needs it."""
    if d.labels is None:
        if d.label_fraction != _DATA_DEFAULTS["label_fraction"]:
            fix = ("mark the unlabelled rows -1 in the file's label array instead" if d.source == "arrays" else
                   'set data.labels = "y" (the name the program takes them under)')
            raise PyroVAEError(f"data.label_fraction = {d.label_fraction} keeps a share of the labels, but "
                               f"data.labels is not set: {fix}, or remove data.label_fraction")
        return
    if not d.labels.isidentifier() or keyword.iskeyword(d.labels):
        raise PyroVAEError(f"data.labels = {d.labels!r} is not a Python identifier: the program receives the labels "
                           "as a keyword argument, so name them as the argument (e.g. labels = \"y\")")
    if d.labels == "x":
        raise PyroVAEError("data.labels = 'x' is the images' name: name the labels otherwise (e.g. labels = \"y\")")
    if d.source == "arrays":
        raise PyroVAEError("data.labels is given but data.source = 'arrays' (files) has no labels of its own: "
                           "name the label array in data.arrays (e.g. arrays = [\"x\", \"y\"] with an .npz or a "
                           "CSV that holds it) and remove data.labels")


@dataclass(frozen=True)
class ModelConfig:
    type: str = field(default="vae", metadata=_choices(_model_type_names))
    latent_dim: int = 16
    prior: str = field(default="normal", metadata=_choices(_prior_names))
    likelihood: str = field(default="bernoulli", metadata=_choices(_likelihood_names))
    # normal / laplace likelihood scale: a positive number, "learned" (per data
    # dimension), "learned_isotropic" (one shared scale) or "amortized" (from z)
    scale: Union[float, Literal["learned", "learned_isotropic", "amortized"]] = "learned"
    levels: Optional[int] = None  # categorical: number of levels (None: max of data + 1)
    guide: str = field(default="normal", metadata=_choices(_guide_names))
    encoder: NetConfig = NetConfig()
    decoder: NetConfig = NetConfig()
    # -- the autoencoder family (models/autoencoders.py); the defaults change nothing --
    # scale of p(z) (normal: standard deviation; laplace: b).  Under the delta guide
    # -log p(z) is a penalty on the code; a large scale all but removes it.
    prior_scale: float = 1.0
    # sparse autoencoder: the Laplace prior's rate lambda (scale 1/lambda), so that
    # -log p(z) = lambda * |z|_1 + const is the L1 penalty (None: lambda = 1)
    sparsity: Optional[float] = None
    # contractive autoencoder: lambda * ||d f(x)/dx||_F^2 of the encoder's code, as a pyro.factor
    contractive: float = 0.0
    # denoising: C(x~|x) applied to the encoder's input in training; the likelihood scores the clean x
    corruption: str = field(default="none", metadata=_choices(_corruption_names))
    # gaussian: noise standard deviation; masking / salt_and_pepper: probability per entry
    corruption_level: float = 0.0
    # decoder weights = the encoder's, transposed (mirrored networks); removes the rescaling
    # degeneracy of the contractive and sparse penalties under the delta guide
    tied: bool = False
    # -- a model of your own instead of a built-in (models/program.py); the keys above are then unused --
    # "package.module:Class": a class (or function) building an object with model(x), guide(x),
    # latent_sites and obs_site; it is given model.args, and data_dim when its signature takes it
    program: Optional[str] = None
    args: Dict[str, Any] = field(default_factory=dict)
    # the folder the program is imported from, before the current directory (default: the TOML file's)
    program_dir: Optional[str] = None
    # what a run trained from, recorded by pyro_vae when it builds the program: the module's file and the sha256
    # of its source; commands on the run refuse a source that changed since (rundir/trust.py)
    program_file: Optional[str] = None
    program_sha256: Optional[str] = None
    # -- a latent-variable graph instead of the one-latent form (models/graph/); implies type = "graph" --
    nodes: Dict[str, NodeConfig] = field(default_factory=dict)
    # the guide: "structured" (bottom-up, each latent from the data and the latents sampled before it that
    # it shares a factor with, as q(z1|x) q(z2|x,z1) or M2's q(y|x) q(z|x,y)) or "mean-field" (each from the data)
    guide_structure: Literal["structured", "mean-field"] = "structured"

    def __post_init__(self):
        # a spec built in Python gets the TOML path's checks (types, names, ranges)
        _validate_fields(self, "model")
        for net in ("encoder", "decoder"):
            _validate_fields(getattr(self, net), f"model.{net}")
        # checks that involve two keys
        if self.sparsity is not None and self.prior != "laplace":
            raise PyroVAEError(
                f"model.sparsity is the rate of the Laplace prior, but model.prior = {self.prior!r}: "
                "set model.prior = 'laplace' or remove model.sparsity"
            )
        if self.sparsity is not None and self.prior_scale != 1.0:
            raise PyroVAEError(
                "model.sparsity and model.prior_scale both set the Laplace prior's scale (scale = 1/sparsity): "
                "keep one of them"
            )
        _check_program_keys(self)
        _check_graph_keys(self)
        conv = [n for n in ("encoder", "decoder") if getattr(self, n).type == "conv"]
        if conv and (self.tied or self.contractive):
            key = "tied" if self.tied else "contractive"
            raise PyroVAEError(f"model.{key} works on MLP networks, but model.{conv[0]}.type = 'conv': "
                               f"use type = 'mlp' or remove model.{key}")
        from .models.corruption import CORRUPTIONS

        if self.corruption in CORRUPTIONS:
            problem = CORRUPTIONS[self.corruption].check_level(self.corruption_level)
            if problem:
                raise PyroVAEError(f"model.corruption_level = {self.corruption_level!r}: {problem}")


#: the keys a model program uses; every other model key configures the built-in models only
PROGRAM_KEYS = ("program", "args", "program_dir", "program_file", "program_sha256")
_PROGRAM_FORMAT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _check_program_keys(m: "ModelConfig") -> None:
    """A program and the built-in model keys contradict each other: one line naming both, instead of one ignored."""
    if m.program is None:
        for key in PROGRAM_KEYS[1:]:
            if getattr(m, key):
                raise PyroVAEError(f"model.{key} is given without model.program: it belongs to a model of your own "
                                   f"(model.program = \"module:Class\"); add model.program or remove model.{key}")
        return
    if not _PROGRAM_FORMAT.match(m.program):
        raise PyroVAEError(f"model.program = {m.program!r}: expected an import path \"module:Class\" "
                           "(e.g. \"my_models:MyVAE\" for class MyVAE in my_models.py next to the config)")
    for f in dataclasses.fields(m):
        if f.name in _MODEL_DEFAULTS and getattr(m, f.name) != _MODEL_DEFAULTS[f.name]:
            raise PyroVAEError(
                f"model.{f.name} is given together with model.program, which builds the model itself and does not "
                f"read it: remove model.{f.name} (or pass it to the program's constructor in [model.args])"
            )


#: the keys a graph uses besides its nodes' own
GRAPH_KEYS = ("type", "nodes", "guide_structure")


def _check_graph_keys(m: "ModelConfig") -> None:
    """A graph's nodes carry their own sizes and networks: the one-latent keys beside them would be ignored."""
    if not m.nodes:
        if m.type == "graph":
            raise PyroVAEError("model.type = 'graph' needs nodes: declare them as [model.nodes.NAME] tables "
                               "(see examples/graph_hierarchical.toml)")
        if m.guide_structure != "structured":
            raise PyroVAEError("model.guide_structure is given without model.nodes: it shapes a graph's guide; "
                               "declare [model.nodes.NAME] tables or remove it")
        return
    if m.program is not None:
        raise PyroVAEError("model.nodes is given together with model.program: a program builds its own model; "
                           "remove one of them")
    if m.type not in ("vae", "graph"):
        raise PyroVAEError(f"model.nodes is given but model.type = {m.type!r}: nodes declare a graph; "
                           "remove model.type (or set it to 'graph')")
    object.__setattr__(m, "type", "graph")
    for f in dataclasses.fields(m):
        if f.name not in GRAPH_KEYS and f.name in _MODEL_DEFAULTS and getattr(m, f.name) != _MODEL_DEFAULTS[f.name]:
            raise PyroVAEError(
                f"model.{f.name} is given together with model.nodes, whose nodes carry their own settings: "
                f"remove model.{f.name} and set it on the node it belongs to ([model.nodes.NAME])")
    for name, node in m.nodes.items():
        _validate_fields(node, f"model.nodes.{name}")
        for net in ("net", "encoder"):
            _validate_fields(getattr(node, net), f"model.nodes.{name}.{net}")
    from .models.graph.spec import check_graph

    check_graph(m)


@dataclass(frozen=True)
class TrainConfig:
    elbo: str = field(default="meanfield", metadata=_choices(_objective_names))
    num_particles: int = 1
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    on_nonfinite: Literal["raise", "skip", "rollback"] = "raise"
    eval_every: int = 1  # epochs between test-ELBO evaluations
    checkpoint_every: int = 1  # epochs between checkpoints
    # record each step's tensor ops once and replay them (training/capture.py): "auto" = built-in models
    capture: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self):
        _validate_fields(self, "train")


#: the largest size any one dimension may have (a layer width, a latent or data size, a level
#: count); a larger number is a typo, and torch's own sizes must stay far below 2**63
MAX_SIZE = 1 << 24
#: seeds are in [0, 2**63): torch.manual_seed takes [0, 2**64), and derived seeds add small offsets
SEED_LIMIT = 1 << 63


def _size(v) -> bool:
    return 1 <= v <= MAX_SIZE


def _seed(v) -> bool:
    return 0 <= v < SEED_LIMIT


_TOO_BIG = f"<= {MAX_SIZE} (a larger size is a typo or cannot fit: use a smaller one)"


def _bounded(floor: int):
    """The range text of a size: the bound it broke (so "must be >= 1" stays as it was)."""
    return lambda v: _TOO_BIG if v > MAX_SIZE else f">= {floor}"


_SIZE = _bounded(1)
_SEED = "in [0, 2**63) (a seed: use a non-negative integer such as 0)"

_DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)}
_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name not in PROGRAM_KEYS + GRAPH_KEYS[1:]}

# Range checks: key path -> (predicate, what it must be).
_RANGES = {
    "data.test_fraction": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "data.split_seed": (_seed, _SEED),
    "data.label_fraction": (lambda v: 0.0 < v <= 1.0, "in (0, 1] (the share of training labels kept)"),
    "data.num_points": (lambda v: 2 <= v <= 2**40, lambda v: ">= 2" if v < 2 else "<= 2**40 (use fewer points)"),
    "data.synthetic_dim": (_size, _SIZE),
    "data.synthetic_latent_dim": (_size, _SIZE),
    "data.synthetic_noise": (lambda v: v > 0, "> 0"),
    "model.latent_dim": (_size, _SIZE),
    "model.levels": (lambda v: v is None or 2 <= v <= MAX_SIZE, _bounded(2)),
    "model.scale": (lambda v: isinstance(v, str) or v > 0, 'a positive number, "learned", "learned_isotropic" or "amortized"'),
    "model.prior_scale": (lambda v: v > 0, "> 0"),
    "model.sparsity": (lambda v: v > 0, "> 0 (the Laplace prior's rate lambda)"),
    "model.contractive": (lambda v: v >= 0, ">= 0"),
    "model.corruption_level": (lambda v: v >= 0, ">= 0"),
    "model.encoder.hidden": (lambda v: all(_size(h) for h in v), lambda v: "a list of positive sizes" if min(v) < 1 else f"a list of sizes each {_TOO_BIG}"),
    "model.decoder.hidden": (lambda v: all(_size(h) for h in v), lambda v: "a list of positive sizes" if min(v) < 1 else f"a list of sizes each {_TOO_BIG}"),
    "train.num_particles": (_size, _SIZE),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: 1 <= v < 2**31, lambda v: ">= 1" if v < 1 else "< 2**31 (use a smaller batch)"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.seed": (_seed, _SEED),
    "train.beta": (lambda v: v >= 0, ">= 0"),
    "train.kl_warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "train.eval_every": (lambda v: v >= 1, ">= 1"),
    "train.checkpoint_every": (lambda v: v >= 1, ">= 1"),
}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (tuple, Tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Dict):
        return f"a table of {_type_name(typing.get_args(tp)[1])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; return the normalized value."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except PyroVAEError:
                continue
        raise PyroVAEError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise PyroVAEError(
                f"{key}: {value!r} is not valid: {did_you_mean(value, allowed)}"
                f"valid: {', '.join(map(str, allowed))}"
            )
        return value
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise PyroVAEError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise PyroVAEError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[1]
        if item is Any:  # keyword arguments of a program: any TOML value
            return {str(k): _toml_value(v, f"{key}.{k}") for k, v in value.items()}
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise PyroVAEError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PyroVAEError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PyroVAEError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise PyroVAEError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise PyroVAEError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise PyroVAEError(f"{key}: expected a table, got {value!r}")
        return _build(tp, value, key)
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # programming error


def _toml_value(value, key: str):
    """A value TOML can hold (a string, number, boolean, list or table), so that config.toml records it."""
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PyroVAEError(f"{key}: expected a finite number, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return [_toml_value(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _toml_value(v, f"{key}.{k}") for k, v in value.items()}
    raise PyroVAEError(f"{key}: {value!r} cannot be written to config.toml: use a string, number, boolean, list or table")


def _build(cls, values: Mapping[str, Any], prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise PyroVAEError(
                f"unknown key {path!r}: {did_you_mean(key, fields)}"
                f"valid keys in [{prefix or 'top level'}]: {', '.join(fields)}"
            )
        kwargs[key] = _checked(value, hints[key], fields[key], path)
    return cls(**kwargs)


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        if self.model.nodes:  # the one check that needs two sections: can the objective sum the discrete nodes?
            from .models.graph.spec import check_objective

            check_objective(self.model, self.train)

    def replace(self, **sections) -> "Config":
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> Dict[str, Any]:
        values = to_plain(self)
        # a program's section holds only the keys it uses; a built-in's, none of the program's
        if self.model.program is not None:
            used = PROGRAM_KEYS
        elif self.model.nodes:
            used = GRAPH_KEYS
        else:
            used = tuple(k for k in values["model"] if k not in PROGRAM_KEYS + GRAPH_KEYS[1:])
        values["model"] = {k: v for k, v in values["model"].items() if k in used}
        return values

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


def config_from_dict(values: Mapping[str, Any], base_dir: Optional[os.PathLike] = None, *,
                     program_dir_default: bool = True) -> Config:
    """Validate a nested mapping (as read from TOML) into a :class:`Config`.

    Relative data paths are resolved against ``base_dir`` (the TOML file's
    folder) so a config means the same thing from any working directory; so is
    a program's folder, which is ``base_dir`` itself when the config names none
    (unless ``program_dir_default`` is False: a run's config.toml, whose
    program was not found in a folder when it names none).
    """
    if not isinstance(values, Mapping):
        raise PyroVAEError(f"a config must be a table of sections, got {type(values).__name__}")
    cfg = _build(Config, values, "")
    return _resolve_paths(cfg, Path(base_dir) if base_dir is not None else None, program_dir_default)


def _resolve_paths(cfg: Config, base: Optional[Path], program_dir_default: bool = True) -> Config:
    updates = {}
    def resolve(value: str) -> str:
        p = Path(value).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        return str(p.absolute()) if base is not None else str(p)

    for key in ("path", "train", "test"):
        value = getattr(cfg.data, key)
        if isinstance(value, Mapping):
            updates[key] = {name: resolve(v) for name, v in value.items()}
        elif value is not None:
            updates[key] = resolve(value)
    if cfg.model.program is not None and (cfg.model.program_dir is not None or (base is not None and program_dir_default)):
        # the program is imported from this folder (then the current directory), wherever the run is loaded from
        folder = Path(cfg.model.program_dir or ".").expanduser()
        if not folder.is_absolute() and base is not None:
            folder = base / folder
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, program_dir=str(folder.absolute())))
    return cfg.replace(data=dataclasses.replace(cfg.data, **updates)) if updates else cfg


def load_config(path: os.PathLike, overrides: Tuple[str, ...] = (), *, run: bool = False) -> Config:
    """Read a TOML file (plus ``section.key=value`` overrides) into a :class:`Config`.

    ``run``: the file is a run folder's config.toml, which records the program's folder when it had one (so none
    means an installed program, not the run folder).
    """
    from .data.files import read_text

    path = Path(path)
    # a missing, special (FIFO, device), unreadable or non-UTF-8 file: one line
    text = read_text(path, "config", "check the path")
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PyroVAEError(f"{path}: invalid TOML: {e}; fix the syntax at that line") from None
    said = values.get("data", {}).get("source") if isinstance(values.get("data"), Mapping) else None
    values = apply_overrides(values, overrides)
    data = values.get("data")
    if said == "digits" and isinstance(data, Mapping) and data.get("source") == "digits" and data.get("train"):
        # a data.train file with the default source means 'arrays'; a file that names digits outright contradicts it
        raise PyroVAEError(
            f"{path}: data.train is given but data.source = 'digits', which does not read it: "
            "remove data.source (a data.train file means source 'arrays') or remove data.train"
        )
    return config_from_dict(values, base_dir=path.parent, program_dir_default=not run)


def apply_overrides(values: Mapping[str, Any], overrides) -> Dict[str, Any]:
    """Apply ``section.key=value`` strings; values are TOML literals, bare words are strings."""
    import copy

    out = copy.deepcopy(dict(values))
    for item in overrides:
        if "=" not in item:
            raise PyroVAEError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise PyroVAEError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: take it as a string
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise PyroVAEError(f"--set {item!r}: {p!r} is not a table")
            node = nxt
        node[parts[-1]] = value
    return out


def dump_toml(values: Mapping[str, Any]) -> str:
    """Write a config dict as TOML (sections, scalars, lists and inline tables)."""

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            if any("\ud800" <= ch <= "\udfff" for ch in v):
                raise PyroVAEError(f"{v!r} is not valid UTF-8 (a file name with undecodable bytes?): rename it")
            # JSON's escapes are TOML's basic-string escapes; TOML also forbids a raw DEL
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items() if x is not None) + " }"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = []
    for section, body in values.items():
        lines.append(f"[{section}]")
        for k, v in body.items():
            if v is not None:
                lines.append(f"{k} = {scalar(v)}")
        lines.append("")
    return "\n".join(lines)
