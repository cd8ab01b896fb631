"""A run's preparation: its config checked, its data loaded, its model built (seeded, a program only as the user allows); writes nothing."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pyro

from ..config import Config, GraphSpec, ModelSpec, ProgramSpec
from ..config.short import replace_node
from ..data.arrays import Dataset
from ..data.checks import check_support as check_support_chunked, row_blocks
from ..data.sizes import inferred_levels
from ..data.sources import SEQUENCE_SOURCES, load_data, load_file, resolve_binarize
from ..errors import PyroVAEError
from ..infer.data_name import named_data
from ..infer.objectives import check_objective_name
from ..models import build_model, check_against_data, check_size, check_size_before_data, check_spec
from ..models.graph.sequence import is_sequence, sequence_arrays
from ..models.graph.spec import check_objective
from ..models.program import build_program
from ..store.trust import RunCode, build_args


def main_observed(model: GraphSpec) -> str:
    """The graph's main observed node: the first declared (the data's observations)."""
    return next(name for name, n in model.nodes.items() if n.role == "observed")


def data_likelihood(model: ModelSpec) -> str:
    """The likelihood the data are loaded for: a program's is its own business, so its data are taken as they are."""
    if isinstance(model, ProgramSpec):
        return "normal"
    return model.nodes[main_observed(model)].likelihood


def load_config_data(cfg: Config) -> Dataset:
    """The data a config names, loaded for its model: the likelihood's, and as sequences for a model over time."""
    return load_data(cfg.data, data_likelihood(cfg.model), sequence_arrays(cfg.model) if is_sequence(cfg.model) else None)


def load_config_file(cfg: Config, path, key: str = "--data"):
    """(data, notes): every row of the file ``path`` a command was given (``key``: its flag), read exactly as ``cfg``
    has data.train read (sequences with their lengths, named arrays, sparse matrices) for the same model."""
    return load_file(cfg.data, path, data_likelihood(cfg.model),
                     sequence_arrays(cfg.model) if is_sequence(cfg.model) else None, key)


def resolve_config(cfg: Config, data: Dataset) -> Config:
    """Fill in what depends on the data: binarization mode and categorical levels."""
    model = cfg.model
    if isinstance(model, GraphSpec):
        x = main_observed(model)
        if model.nodes[x].likelihood == "categorical" and model.nodes[x].levels is None:
            model = replace_node(model, x, levels=inferred_levels(data.train_x, data.test_x))
    d = dataclasses.replace(cfg.data, binarize=resolve_binarize(cfg.data, data_likelihood(cfg.model)))
    return cfg.replace(data=d, model=model)


def check_support(model, data: Dataset) -> None:
    lik = getattr(model, "likelihood", None)
    if lik is None or not hasattr(lik, "check_support"):
        return
    if data.binarize != "dynamic":  # dynamic: batches are binarized as they are drawn
        # chunk by chunk when the training data is a memory map (data/mapped.py)
        check_support_chunked(lik, data.train_x, "the training data")
    lik.check_support(data.test_x, "the test data")


def check_config(cfg: Config) -> None:
    """What a config can be checked for before any data is read: every name it uses against the registry that
    defines it (objectives, likelihoods, families, guide laws, corruptions), and its graph as a whole."""
    check_objective_name(cfg.train.elbo)
    check_spec(cfg.model)
    if isinstance(cfg.model, GraphSpec):
        check_objective(cfg.model, cfg.train)
        check_size_before_data(cfg.model)
        if cfg.data.source in SEQUENCE_SOURCES and not is_sequence(cfg.model):
            raise PyroVAEError(f"data.source = {cfg.data.source!r} holds sequences (N, T, D), but no node of the "
                               "model is over time: declare the graph's nodes with over = \"time\" (see "
                               "examples/sequence_linear_gaussian.toml)")


def prepare(cfg: Config, run_code: Optional[RunCode] = None):
    """Load data, resolve the config and build the model (seeded); writes nothing.

    ``run_code``: the config is a run folder's (resumed), whose program is built only as ``run_code`` allows.
    """
    check_config(cfg)  # every name and the graph first: a typo costs no data loading
    data = load_config_data(cfg)
    if data.observed is not None and isinstance(cfg.model, GraphSpec) and cfg.model.short is not None:
        names = ", ".join(data.train)
        key, said = (("data.labels", f"data.labels = {cfg.data.labels!r} passes {names}") if cfg.data.labels is not None
                     else ("data.arrays", f"data.arrays names {names}"))
        raise PyroVAEError(f"{said} but the one-latent model (model.latent_dim, ...) takes one array: name the graph's "
                           f"nodes after the arrays ([model.nodes.NAME]), or use a program of your own "
                           f"(model.program = \"module:Class\"); or remove {key}")
    cfg = resolve_config(cfg, data)
    check_against_data(cfg.model, len(data.train_x))
    if isinstance(cfg.model, GraphSpec):
        # before torch allocates it: the parameters, and a step's activations for a batch as the trainer draws it
        check_size(cfg.model, data.dim, data.image_shape, batch_size=min(cfg.train.batch_size, len(data.train_x)))
    pyro.set_rng_seed(cfg.train.seed)  # parameter initialisation follows train.seed
    model, spec = build(cfg.model, data.dim, data.image_shape, run_code)
    cfg = cfg.replace(model=spec)
    if hasattr(model, "check_data"):  # a graph: its data nodes against the data's arrays
        origins = data.origins or {}
        model.check_data(data.train, "the training data", origins.get("train"))
        model.check_data(data.test, "the test data", origins.get("test"))
    check_support(model, data)
    fit_data = getattr(getattr(model, "likelihood", None), "fit_data", None)
    if fit_data is not None:
        # a count law's library prior from the training rows (models/counts.py), before anything traces the model
        # (a resumed run's checkpoint then restores the one it trained with)
        fit_data(block for _, block in row_blocks(data.train_x))
    return cfg, data, model


def named_splits(model, data: Dataset):
    """(train, test) of ``data`` as named arrays for ``model``: a source's one array named as the model takes its
    data (infer/data_name.py), named arrays as they are."""
    return named_data(model, data.train, "the training data"), named_data(model, data.test, "the test data")


def build(spec: ModelSpec, data_dim: int, image_shape=None, run_code: Optional[RunCode] = None):
    """(the model a config's model section describes, that section as resolved): a built-in, or a program.

    ``run_code`` None: a config the user trains, whose program they named by running it; else a run folder's,
    whose program runs only as the user allows (store/trust.py).
    """
    if isinstance(spec, ProgramSpec):
        return build_program(spec, data_dim, **build_args(spec, run_code))
    return build_model(spec, data_dim, image_shape), spec
