"""The run specification's schema: frozen dataclasses, each field's type and range, and checks between keys.

A :class:`Config` has three sections.  ``data`` and ``train`` are one record
each; ``model`` is a :class:`GraphSpec` (the declared path: a graph of nodes,
which the one-latent form desugars into, config/short.py) or a
:class:`ProgramSpec` (a program brought by import path).  Every field is
checked here as it is built, from TOML or from Python alike: its type, its
range, and keys that contradict each other, each failure one line naming the
dotted key path.  Names that live in a model's registries (likelihoods,
families, guide laws, objectives, corruptions) are not checked here but where
the registries live, when the model is built (models/build.py), still before
any data is read.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Union

from ..data.sizes import too_large
from ..data.sources import COUNT_LIKELIHOODS, SOURCES
from ..errors import PyroVAEError, did_you_mean

ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "softplus", "leaky_relu", "sigmoid", "silu")
#: the roles of a graph node: a latent, observed data, data observed for some rows only, a conditioning input
NODE_ROLES = ("latent", "observed", "partial", "input")
#: the largest size any one dimension may have (a layer width, a latent or data size, a level
#: count); a larger number is a typo, and torch's own sizes must stay far below 2**63
MAX_SIZE = 1 << 24
#: the most intra-op threads a run may ask for: more is a typo (each is an OS thread)
MAX_THREADS = 1024
#: what a thread setting must be, as every message about one says it
THREADS_RULE = f"'auto' or an integer in [1, {MAX_THREADS}] (a thread count such as 1)"
#: seeds are in [0, 2**63): torch.manual_seed takes [0, 2**64), and derived seeds add small offsets
SEED_LIMIT = 1 << 63

#: a count node's library size: none, the row's own total, or a latent log-library (models/counts.py)
LIBRARIES = ("none", "observed", "latent")
#: how a negative binomial's inverse dispersion is shared (models/counts.py)
DISPERSIONS = ("feature", "feature-label", "amortized")

Scale = Union[float, Literal["learned", "learned_isotropic", "amortized"]]


@dataclass(frozen=True)
class NetConfig:
    """A network: an MLP (``hidden`` sizes, ``[]`` means a single linear map) or, for image data, a small
    convolutional net (``type = "conv"``: two stride-2 layers of ``channels``, then the MLP's ``hidden``)."""

    hidden: Tuple[int, ...] = (400,)
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    type: Literal["mlp", "conv"] = "mlp"
    channels: Tuple[int, ...] = (32, 64)
    # batch normalization (no affine part) of the network's outputs, as ProdLDA's decoder and encoder (Srivastava
    # & Sutton 2017): in training a row's value depends on its batch, so every evaluation runs in eval mode
    batchnorm: bool = False


@dataclass(frozen=True)
class TransitionConfig:
    """A chain's transition p(z_t | z_{t-1}, u_t) (models/graph/sequence.py): the deep Markov model's "gated"
    network (a gate between a linear map and an MLP's proposal, ``hidden`` wide, its scale from the proposal) or
    "linear" (z_t = A z_{t-1} + B u_t + b plus Gaussian noise of a learned diagonal scale)."""

    type: Literal["gated", "linear"] = "gated"
    hidden: Tuple[int, ...] = (32,)
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]


@dataclass(frozen=True)
class RNNConfig:
    """A chain's guide reads the sequence backward, x_{t:T} (and u_{t:T}) into h_t, with this recurrent network."""

    type: Literal["gru", "lstm"] = "gru"
    hidden: int = 32
    layers: int = 1


@dataclass(frozen=True)
class NodeConfig:
    """One node of a latent-variable graph (``[model.nodes.NAME]``); models/graph/spec.py checks the graph."""

    # latent: sampled by the model, inferred by the guide; observed: a data array scored by its likelihood;
    # partial: a discrete data array observed where given (labels, -1 where missing) and latent elsewhere;
    # input: a data array that is always given and only conditions (covariates, a CVAE's label)
    role: Literal[NODE_ROLES] = "latent"  # type: ignore[valid-type]
    # latent/partial/input: normal, laplace, categorical, bernoulli, mixture, logistic_normal (latent); real (input)
    family: str = "normal"
    # size: a latent's dimension; categorical: the number of classes; bernoulli: the number of bits;
    # observed: the data's width (None: read off the data); input: the array's width (categorical: classes)
    dim: Optional[int] = None
    parents: Tuple[str, ...] = ()
    # observed nodes: the likelihood of a data row
    likelihood: str = "bernoulli"
    # observed normal/laplace likelihood: as model.scale; latent normal/laplace with parents: "amortized"
    # (from the parents, the default) or "learned" (one free scale per dimension) or a fixed number
    scale: Optional[Scale] = None
    levels: Optional[int] = None  # observed categorical likelihood: number of levels
    # observed count likelihoods (poisson, negative_binomial, zinb, zip): scVI's library size.  "none": the
    # decoder gives each count's log mean; "observed": it gives proportions, scaled by the row's own total;
    # "latent": scaled by a latent log-library, its prior the training rows' log totals' mean and variance
    library: Literal[LIBRARIES] = "none"  # type: ignore[valid-type]
    # negative_binomial / zinb: the inverse dispersion theta, learned per "feature", per feature and category of
    # an input node ("feature-label", scVI's gene-label), or "amortized" (from the parents, per row)
    dispersion: Literal[DISPERSIONS] = "feature"  # type: ignore[valid-type]
    # dispersion = "feature-label": the categorical input node whose category picks theta (None: the only one)
    dispersion_by: Optional[str] = None
    # roots: the prior p(node) is fixed ("fixed": N(0, prior_scale^2), uniform classes) or learned; continuous
    # roots also "vamp" (a mixture of the node's guide at pseudo_inputs learned inputs, Tomczak & Welling 2018)
    # or "flow" (flows autoregressive transforms of the fixed prior, models/graph/priors.py)
    prior: Literal["fixed", "learned", "vamp", "flow"] = "fixed"
    prior_scale: float = 1.0
    components: Optional[int] = None  # mixture: the number of Gaussian components (its component is enumerated)
    # logistic_normal: the symmetric Dirichlet concentration alpha whose Laplace approximation (in the softmax
    # basis) is the node's prior (None: 1.0)
    concentration: Optional[float] = None
    net: NetConfig = NetConfig()  # the model's conditional network from the parents
    encoder: NetConfig = NetConfig()  # the guide's network q(node | data, ...)
    # continuous latents: the guide law of q(node | ...): "normal" (diagonal Gaussian), "delta" (a point mass),
    # "lowrank" (N(loc, D + V V^T), V of ``rank`` columns), "fullrank" (N(loc, L L^T), L an amortized Cholesky),
    # "iaf" or "spline" (flows: the Gaussian then conditional autoregressive transforms, models/graph/flows.py)
    guide: str = "normal"
    rank: Optional[int] = None  # guide = "lowrank": the columns of V, 1 <= rank < dim (None: 1)
    # -- flows (models/graph/flows.py, priors.py) --
    # the number of transforms of a flow guide ("iaf", "spline") and of a flow prior (None: 2)
    flows: Optional[int] = None
    # the hidden sizes of each transform's autoregressive network, each >= dim (None: Pyro's default, 10 * dim)
    flow_hidden: Optional[Tuple[int, ...]] = None
    # prior = "vamp": the number of learned pseudo-inputs (None: 50; at most the training rows)
    pseudo_inputs: Optional[int] = None
    # partial discrete nodes: Kingma et al.'s auxiliary weight alpha on log q(y | x) of the labelled rows
    classifier_weight: float = 0.0
    # "time": the node has a value per time step of a sequence (models/graph/sequence.py): a latent is a Markov
    # chain z_t | z_{t-1} (its ``transition``), an observed node is emitted per step from its parents' values at
    # that step, an input is a control u_t; None: one value per data point
    over: Optional[Literal["time"]] = None
    transition: TransitionConfig = TransitionConfig()  # a latent over time: p(z_t | z_{t-1}, u_t)
    rnn: RNNConfig = RNNConfig()  # a latent over time: the guide's backward RNN over the sequence


@dataclass(frozen=True)
class OneLatent:
    """The one-latent form of ``[model]``: a VAE or an autoencoder in a few keys, sugar for the graph
    {z: root latent, x: observed, parents [z]} (config/short.py)."""

    latent_dim: int = 16
    prior: str = "normal"  # normal | laplace: the latent's family; vamp | flow: a normal latent with that prior
    likelihood: str = "bernoulli"
    # normal / laplace likelihood scale: a positive number, "learned" (per data
    # dimension), "learned_isotropic" (one shared scale) or "amortized" (from z)
    scale: Scale = "learned"
    levels: Optional[int] = None  # categorical: number of levels (None: max of data + 1)
    library: Literal[LIBRARIES] = "none"  # type: ignore[valid-type]  # count likelihoods: as a node's library
    dispersion: Literal[DISPERSIONS] = "feature"  # type: ignore[valid-type]  # negative_binomial / zinb: theta's
    guide: str = "normal"  # normal | delta (a point mass: an autoencoder) | lowrank | fullrank | iaf | spline (flows)
    rank: Optional[int] = None  # guide = "lowrank": the columns of V in q's covariance D + V V^T (None: 1)
    flows: Optional[int] = None  # iaf / spline guide, flow prior: the number of transforms (None: 2)
    flow_hidden: Optional[Tuple[int, ...]] = None  # each transform's hidden sizes (None: 10 * latent_dim)
    pseudo_inputs: Optional[int] = None  # prior = "vamp": the number of learned pseudo-inputs (None: 50)
    encoder: NetConfig = NetConfig()
    decoder: NetConfig = NetConfig()
    # -- the autoencoder family (models/graph/penalties.py); the defaults change nothing --
    # scale of p(z) (normal: standard deviation; laplace: b).  Under the delta guide
    # -log p(z) is a penalty on the code; a large scale all but removes it.
    prior_scale: float = 1.0
    # sparse autoencoder: the Laplace prior's rate lambda (scale 1/lambda), so that
    # -log p(z) = lambda * |z|_1 + const is the L1 penalty (None: lambda = 1)
    sparsity: Optional[float] = None
    # contractive autoencoder: lambda * ||d f(x)/dx||_F^2 of the encoder's code, as a pyro.factor
    contractive: float = 0.0
    # denoising: C(x~|x) applied to the encoder's input in training; the likelihood scores the clean x
    corruption: str = "none"
    # gaussian: noise standard deviation; masking / salt_and_pepper: probability per entry
    corruption_level: float = 0.0
    # decoder weights = the encoder's, transposed (mirrored networks); removes the rescaling
    # degeneracy of the contractive and sparse penalties under the delta guide
    tied: bool = False

    def __post_init__(self):
        validate_fields(self, "model")
        for net in ("encoder", "decoder"):
            validate_fields(getattr(self, net), f"model.{net}")
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
        conv = [n for n in ("encoder", "decoder") if getattr(self, n).type == "conv"]
        if conv and (self.tied or self.contractive):
            key = "tied" if self.tied else "contractive"
            raise PyroVAEError(f"model.{key} works on MLP networks, but model.{conv[0]}.type = 'conv': "
                               f"use type = 'mlp' or remove model.{key}")


@dataclass(frozen=True)
class GraphSpec:
    """A declared model: a graph of named nodes (``[model.nodes.NAME]``), compiled by models/graph/.

    ``corruption``, ``contractive`` and ``tied`` are the autoencoder family's options; the last two need a
    one-latent graph with MLP networks.  ``short``: the one-latent form the graph was declared in, if it was
    (config.toml keeps that form)."""

    nodes: Dict[str, NodeConfig] = field(default_factory=dict)
    # the guide: "structured" (bottom-up, each latent from the data and the latents sampled before it that
    # it shares a factor with, as q(z1|x) q(z2|x,z1) or M2's q(y|x) q(z|x,y)) or "mean-field" (each from the data)
    guide_structure: Literal["structured", "mean-field"] = "structured"
    corruption: str = "none"
    corruption_level: float = 0.0
    contractive: float = 0.0
    tied: bool = False
    short: Optional[OneLatent] = None

    def __post_init__(self):
        validate_fields(self, "model")
        if not self.nodes:
            raise PyroVAEError("model.nodes is empty: declare the graph's nodes as [model.nodes.NAME] tables (see "
                               "examples/graph_hierarchical.toml), or use the one-latent keys (model.latent_dim, ...)")
        for name, node in self.nodes.items():
            validate_fields(node, f"model.nodes.{name}")
            for net in ("net", "encoder", "transition", "rnn"):
                validate_fields(getattr(node, net), f"model.nodes.{name}.{net}")


_PROGRAM_FORMAT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class ProgramSpec:
    """A program of your own (models/program.py): ``"module:Class"`` built with ``args``."""

    # "package.module:Class": a class (or an annotated factory function) defined in that module, building an
    # object with model(x), guide(x), latent_sites and obs_site; it gets args, and data_dim when it takes it
    program: str
    args: Dict[str, Any] = field(default_factory=dict)
    # the folder the program is imported from, before the current directory (default: the TOML file's)
    program_dir: Optional[str] = None
    # what a run trained from, recorded by pyro_vae when it builds the program: the module's file and the sha256
    # of its source; commands on the run refuse a source that changed since (store/trust.py)
    program_file: Optional[str] = None
    program_sha256: Optional[str] = None

    def __post_init__(self):
        validate_fields(self, "model")
        if not _PROGRAM_FORMAT.match(self.program):
            raise PyroVAEError(f"model.program = {self.program!r}: expected an import path \"module:Class\" "
                               "(e.g. \"my_models:MyVAE\" for class MyVAE in my_models.py next to the config)")


#: a model section: declared (a graph, the one-latent form desugared into one) or brought (a program)
ModelSpec = Union[GraphSpec, ProgramSpec]


@dataclass(frozen=True)
class DataConfig:
    """The data: a built-in source (digits, Fashion-MNIST/MNIST IDX files, synthetic) or files, and their split."""

    source: str = "digits"
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
    # synthetic sources: x = tanh(A z + b) W + noise, z ~ N(0, I); synthetic_counts: data/synthetic_counts.py
    num_points: int = 2000
    synthetic_dim: int = 16
    synthetic_latent_dim: int = 2
    synthetic_noise: float = 0.1
    # synthetic sequence sources (synthetic_sequences, synthetic_pendulum, synthetic_chorales): the steps T of
    # each sequence, and the shortest length drawn (None: every sequence has all T steps; else lengths are
    # uniform in [min_length, T] and the steps beyond are padding, masked out)
    sequence_length: int = 50
    min_length: Optional[int] = None
    # a text file of the data's column names, one a line (genes, words; a 10x features.tsv: its second column);
    # data.vocabulary is the same file under a topic model's name: one of the two (data/names.py reads either)
    feature_names: Optional[str] = None
    # a data.train (and data.test, --data) matrix file whose columns are the data points: a 10x matrix.mtx is
    # features x cells; read transposed (a sparse one stays sparse)
    transpose: bool = False
    # synthetic_counts source: the mean total count of a row, and the mean dropout probability of a feature
    # (0: negative-binomial counts; > 0: zero-inflated)
    synthetic_library: float = 1000.0
    synthetic_dropout: float = 0.0
    # synthetic_corpus source (data/corpus.py): documents of an LDA with synthetic_latent_dim topics over
    # synthetic_dim words: the Dirichlet concentrations of the documents' topics and of the topics' words, and
    # the mean document length
    corpus_alpha: float = 0.1
    corpus_beta: float = 0.05
    corpus_length: int = 100
    # word counts: a text file of one word per line, line i naming column i (top words per topic, NPMI); the
    # same as data.feature_names, under the name topic models use
    vocabulary: Optional[str] = None

    def __post_init__(self):
        validate_fields(self, "data")
        if self.feature_names is not None and self.vocabulary is not None:
            raise PyroVAEError(f"data.feature_names = {self.feature_names!r} and data.vocabulary = "
                               f"{self.vocabulary!r} both name the data's columns: keep one (they are read alike, one "
                               "name a line)")
        if self.min_length is not None and self.min_length > self.sequence_length:
            raise PyroVAEError(f"data.min_length = {self.min_length} is above data.sequence_length = "
                               f"{self.sequence_length}: lower it (lengths are drawn in [min_length, sequence_length])")
        if self.source not in SOURCES:
            names = SOURCES.names()
            raise PyroVAEError(f"data.source: unknown name {self.source!r}: {did_you_mean(self.source, names)}"
                               f"valid: {', '.join(names)}")
        if self.train is not None and self.source == "digits":
            # `train = "x.npy"` alone means array data (digits is only the default source)
            object.__setattr__(self, "source", "arrays")
        _check_data_keys(self)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the objective, the optimizer, the schedule, the checkpoints, and what a non-finite step does.

    The ``[train]`` section of a TOML file; every key is checked when the config is made (a wrong type or
    range is a one-line error naming ``train.KEY``).  The keys:

    - ``elbo``: the objective, a name in ``pv.OBJECTIVES``: ``"auto"`` (chosen from the program once: analytic KL
      where it is exact, Monte Carlo elsewhere, enumeration for a discrete latent), ``"trace"`` (Pyro's ``Trace_ELBO``), ``"meanfield"``
      (``TraceMeanField_ELBO``: analytic KL where that is exact), ``"iwae"`` (the importance-weighted bound,
      ``RenyiELBO`` with alpha 0), ``"enum"`` (``TraceEnum_ELBO``: a guide's discrete sites summed out) or ``"stl"``
      (the ELBO with the path-derivative, "sticking the landing", gradient: reparameterized guides).
    - ``num_particles``: samples per data point in each step (K, for ``"iwae"``).
    - ``epochs``: passes over the training data (a resumed run trains up to this many in all).
    - ``batch_size``: rows per step.
    - ``lr``: Adam's step size.
    - ``seed``: seeds parameter initialisation, the data order and the model's draws.
    - ``device``: ``"auto"`` (CUDA when there is one), ``"cpu"`` or ``"cuda"``.
    - ``beta``: the weight of the latent sites' terms (the KL weight of a beta-VAE).
    - ``kl_warmup_epochs``: epochs over which that weight rises linearly from 0 to ``beta`` (0: none).
    - ``on_nonfinite``: what a NaN/Inf loss or gradient does: ``"raise"`` (save the last good state and stop),
      ``"skip"`` (drop that batch) or ``"rollback"`` (back to the start of the epoch).
    - ``eval_every``: epochs between test-ELBO evaluations.
    - ``checkpoint_every``: epochs between checkpoints.
    - ``capture``: ``"auto"``, ``"on"`` or ``"off"``: record one step's tensor ops once and replay them
      (``"auto"``: built-in models).
    - ``threads``: torch's intra-op threads while the run trains and evaluates: ``"auto"`` (one a core that is free,
      one for a small step or a busy machine; ``OMP_NUM_THREADS`` set by you wins) or a count.
    """

    elbo: str = "auto"  # meanfield where every analytic KL is exact, else trace (enum for discrete latents)
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
    # torch's intra-op threads: "auto" = chosen per run from the step's size and the free cores (runtime/threads.py)
    threads: Union[int, Literal["auto"]] = "auto"

    def __post_init__(self):
        validate_fields(self, "train")


@dataclass(frozen=True)
class EvalConfig:
    """How a run's final evaluation estimates log p(x), kept with the run so that ``train --resume`` evaluates the
    same way: importance samples per test point, "auto" (resolved when the run starts) or "none" (skip it)."""

    iw_samples: Union[int, Literal["auto", "none"]] = "auto"

    def __post_init__(self):
        validate_fields(self, "evaluate")


# -- field checks: types, ranges -------------------------------------------------------------


def _size(v) -> bool:
    return 1 <= v <= MAX_SIZE


def _seed(v) -> bool:
    return 0 <= v < SEED_LIMIT


_TOO_BIG = f"<= {MAX_SIZE} (a larger size is a typo or cannot fit: use a smaller one)"


def _bounded(floor: int):
    """The range text of a size: the bound it broke (so "must be >= 1" stays as it was)."""
    return lambda v: _TOO_BIG if v > MAX_SIZE else f">= {floor}"


def _model_size(floor: int):
    """A model size: at least ``floor``; above it, only what cannot be allocated at all is refused here (the
    model's memory is counted when it is built, models/build.py check_size)."""
    return (lambda v: v is None or (floor <= v and too_large(v) is None),
            lambda v: f">= {floor}" if v < floor else too_large(v))


_SIZE = _bounded(1)
_SEED = "in [0, 2**63) (a seed: use a non-negative integer such as 0)"
_HIDDEN = (lambda v: all(1 <= h and too_large(h) is None for h in v),
           lambda v: "a list of positive sizes" if min(v) < 1 else f"a list of sizes each {too_large(max(v))}")

# Range checks: key path -> (predicate, what it must be).
RANGES = {
    "data.test_fraction": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "data.split_seed": (_seed, _SEED),
    "data.label_fraction": (lambda v: 0.0 < v <= 1.0, "in (0, 1] (the share of training labels kept)"),
    "data.num_points": (lambda v: 2 <= v <= 2**40, lambda v: ">= 2" if v < 2 else "<= 2**40 (use fewer points)"),
    "data.synthetic_dim": (_size, _SIZE),
    "data.synthetic_latent_dim": (_size, _SIZE),
    "data.synthetic_noise": (lambda v: v > 0, "> 0"),
    "data.sequence_length": (lambda v: 1 <= v <= 100000, lambda v: ">= 1" if v < 1 else "<= 100000 (use shorter sequences)"),
    "data.min_length": (lambda v: 1 <= v <= 100000, lambda v: ">= 1" if v < 1 else "<= 100000"),
    "data.synthetic_library": (lambda v: 1 <= v <= 1e6, "in [1, 1e6] (a row's mean total count)"),
    "data.synthetic_dropout": (lambda v: 0 <= v <= 0.45, "in [0, 0.45] (each feature's is uniform on [0, 2x])"),
    "data.corpus_alpha": (lambda v: 1e-3 <= v <= 1e3, "in [0.001, 1000] (a Dirichlet concentration)"),
    "data.corpus_beta": (lambda v: 1e-3 <= v <= 1e3, "in [0.001, 1000] (a Dirichlet concentration)"),
    "data.corpus_length": (lambda v: 1 <= v <= 10**6, "in [1, 10**6] (words per document)"),
    "model.latent_dim": _model_size(1),
    # levels is read only by a categorical likelihood: a huge one elsewhere would pass every memory check unused
    "model.levels": (lambda v: v is None or 2 <= v <= MAX_SIZE, _bounded(2)),
    "model.scale": (lambda v: isinstance(v, str) or v > 0, 'a positive number, "learned", "learned_isotropic" or "amortized"'),
    "model.prior_scale": (lambda v: v > 0, "> 0"),
    "model.rank": (lambda v: v >= 1, ">= 1 (the columns of V in D + V V^T)"),
    "model.sparsity": (lambda v: v > 0, "> 0 (the Laplace prior's rate lambda)"),
    "model.contractive": (lambda v: v >= 0, ">= 0"),
    "model.corruption_level": (lambda v: v >= 0, ">= 0"),
    "model.encoder.hidden": _HIDDEN,
    "model.flows": (lambda v: v is None or 1 <= v <= MAX_SIZE, _bounded(1)),
    "model.flow_hidden": (lambda v: v is None or _HIDDEN[0](v), lambda v: _HIDDEN[1](v)),
    "model.pseudo_inputs": (lambda v: v is None or 1 <= v <= MAX_SIZE, _bounded(1)),
    "model.decoder.hidden": _HIDDEN,
    "train.num_particles": (_size, _SIZE),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: 1 <= v < 2**31, lambda v: ">= 1" if v < 1 else "< 2**31 (use a smaller batch)"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.seed": (_seed, _SEED),
    "train.beta": (lambda v: v >= 0, ">= 0"),
    "train.kl_warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "train.eval_every": (lambda v: v >= 1, ">= 1"),
    "train.checkpoint_every": (lambda v: v >= 1, ">= 1"),
    "evaluate.iw_samples": (lambda v: isinstance(v, str) or 1 <= v <= MAX_SIZE,
                            lambda v: _TOO_BIG if v > MAX_SIZE else '>= 1, "auto" or "none"'),
    "train.threads": (lambda v: v == "auto" or 1 <= v <= MAX_THREADS, THREADS_RULE),
}


def validate_fields(obj, section: str) -> None:
    """Check a record built in Python as a TOML file is checked: every field's type and range.

    Numbers are normalized in place (an int where a float is expected becomes a float).
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{section}.{f.name}"
        object.__setattr__(obj, f.name, checked(getattr(obj, f.name), hints[f.name], path))


def checked(value, tp, path: str):
    """``value`` at ``path``: type-checked and normalized, in range."""
    value = _coerce(value, tp, path)
    check = RANGES.get(path)
    if check is not None and value is not None and not check[0](value):
        what = check[1](value) if callable(check[1]) else check[1]
        raise PyroVAEError(f"{path}: must be {what} (got {value!r})")
    return value


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


def _coerce_union(value, tp, key: str):
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
    raise PyroVAEError(f"{key}: expected {_type_name(tp)}, got {value!r}{_integer_hint(value, args)}")


def _integer_hint(value, types) -> str:
    """Why a whole number written as 1e8 is not an integer: TOML (and --set) read it as a float."""
    if int in types and isinstance(value, float) and value.is_integer() and float not in types:
        return f" (a number written with a decimal point or an exponent is a float: write {int(value)})"
    return ""


def _coerce_scalar(value, tp, key: str):
    if tp is bool:
        if not isinstance(value, bool):
            raise PyroVAEError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PyroVAEError(f"{key}: expected an integer, got {value!r}{_integer_hint(value, (int,))}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PyroVAEError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise PyroVAEError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise PyroVAEError(f"{key}: expected a string, got {value!r}")
    return value


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; return the normalized value."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return _coerce_union(value, tp, key)
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
            return {str(k): toml_value(v, f"{key}.{k}") for k, v in value.items()}
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise PyroVAEError(f"{key}: expected a table, got {value!r}")
        return build(tp, value, key)
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # programming error


def toml_value(value, key: str):
    """A value TOML can hold (a string, number, boolean, list or table), so that config.toml records it."""
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PyroVAEError(f"{key}: expected a finite number, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return [toml_value(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): toml_value(v, f"{key}.{k}") for k, v in value.items()}
    raise PyroVAEError(f"{key}: {value!r} cannot be written to config.toml: use a string, number, boolean, list or table")


def build(cls, values: Mapping[str, Any], prefix: str):
    """``cls`` from a mapping of its fields (as TOML gives them): unknown keys fail with "did you mean"."""
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
        kwargs[key] = checked(value, hints[key], path)
    return cls(**kwargs)


# -- data keys that contradict each other ------------------------------------------------

#: the sources that read data.path (the IDX folder)
_PATH_SOURCES = ("fashion-mnist", "mnist")


#: the count keys of an observed node, and the likelihoods that read the dispersion (models/counts.py)
COUNT_KEYS = ("library", "dispersion", "dispersion_by")
NEGATIVE_BINOMIALS = ("negative_binomial", "zinb")


def unread_count_keys(likelihood: str, dispersion: str) -> Tuple[str, ...]:
    """The count keys an observed node of ``likelihood`` (and ``dispersion``) does not read."""
    if likelihood not in COUNT_LIKELIHOODS:
        return COUNT_KEYS
    unread = ("library",) if likelihood == "multinomial" else ()  # its rows' totals are the trials
    if likelihood not in NEGATIVE_BINOMIALS:
        return unread + ("dispersion", "dispersion_by")
    return unread + (("dispersion_by",) if dispersion != "feature-label" else ())


def unread_count_key(path: str, key: str, likelihood: str, dispersion: str) -> PyroVAEError:
    """One line: the count key ``path`` is written, but the node's ``likelihood`` does not read it."""
    if likelihood not in COUNT_LIKELIHOODS:
        why = f"is for a count likelihood ({', '.join(COUNT_LIKELIHOODS)}), but the likelihood is {likelihood!r}"
    elif key == "library":
        why = "does not apply to the multinomial, which reads each row's total as its number of trials"
    elif likelihood not in NEGATIVE_BINOMIALS:
        why = (f"is the negative binomial's ({', '.join(NEGATIVE_BINOMIALS)}), but likelihood {likelihood!r} has no "
               "dispersion")
    else:
        why = f"names the label of dispersion = 'feature-label', but dispersion = {dispersion!r}"
    return PyroVAEError(f"{path} {why}: remove it (a key written where it does not apply would be ignored)")


_SYNTHETIC = ("synthetic", "synthetic_counts", "synthetic_corpus", "synthetic_sequences", "synthetic_pendulum",
              "synthetic_chorales")
_SYNTHETIC_SEQUENCES = ("synthetic_sequences", "synthetic_pendulum", "synthetic_chorales")
#: the data keys only synthetic sources read, each with the sources that read it: a file or image source reads none
SYNTHETIC_KEYS = {
    "num_points": _SYNTHETIC, "synthetic_dim": _SYNTHETIC, "synthetic_latent_dim": _SYNTHETIC,
    "synthetic_noise": _SYNTHETIC, "sequence_length": _SYNTHETIC_SEQUENCES, "min_length": _SYNTHETIC_SEQUENCES,
    "synthetic_library": ("synthetic_counts",), "synthetic_dropout": ("synthetic_counts",),
    "corpus_alpha": ("synthetic_corpus",), "corpus_beta": ("synthetic_corpus",), "corpus_length": ("synthetic_corpus",),
}


def unread_data_keys(source: str) -> Tuple[str, ...]:
    """The synthetic-only data keys that ``source`` does not read (a run's config.toml leaves them out)."""
    return tuple(k for k, readers in SYNTHETIC_KEYS.items() if source not in readers)


def unread_data_key(source: str, key: str) -> PyroVAEError:
    """One line: the synthetic-only ``key`` is set, but data.source = ``source`` does not read it."""
    readers = SYNTHETIC_KEYS[key]
    what = ("data.train is a file, read as it is" if source == "arrays" else
            f"data.source = {source!r} does not read it")
    return PyroVAEError(f"data.{key} is read only by data.source = {' / '.join(readers)} (it shapes the generated "
                        f"data), but {what}: remove data.{key}")


def _check_data_keys(d: DataConfig) -> None:
    """Keys that contradict each other fail in one line naming both, instead of one being ignored."""
    for key in unread_data_keys(d.source):
        if getattr(d, key) != _DATA_DEFAULTS[key]:
            raise unread_data_key(d.source, key)
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
    if d.transpose and (d.source != "arrays" or d.arrays or isinstance(d.train, Mapping)):
        raise PyroVAEError("data.transpose = true swaps the rows and columns of one data.train matrix file, but "
                           + ("the data are named arrays" if d.source == "arrays" else f"data.source = {d.source!r}")
                           + ": remove data.transpose")
    _check_labels(d)
    if d.test is not None and d.test_fraction != _DATA_DEFAULTS["test_fraction"]:
        raise PyroVAEError(
            "data.test_fraction is given together with data.test, which is the held-out data already: "
            "remove one of them"
        )


def _check_labels(d: DataConfig) -> None:
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


_DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)}
