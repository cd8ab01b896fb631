"""The data of one fit: checked and on the device, in row groups, and each epoch's batches drawn from its permutation.

In-memory data is moved to the training device once and batched there by index; a memory map
(data/mapped.py) stays on the host and only each batch's rows are read and moved.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..data import batch
from ..data.checks import all_finite, check_support as check_support_chunked, describe_nonfinite, row_blocks
from ..data.mapped import MappedRows
from ..errors import PyroVAEError
from ..infer.data_name import named_data
from ..infer.rng import isolated_rng
from ..infer.sites import observed_name
from ..runtime import distributed


class FitData:
    """The training (and test) data of one :meth:`Trainer.fit`, checked before any step.

    ``train_x`` / ``test_x``: named arrays (one tensor: named as the model takes its data); ``obs`` names the
    observations' array; ``groups`` are the row groups of arrays missing in some rows (one group otherwise),
    which batches never mix.
    """

    def __init__(self, model, device: torch.device, batch_size: int, train_x, test_x=None, binarize: str = "none"):
        self.model, self.device, self.batch_size, self.binarize = model, device, batch_size, binarize
        train_x, test_x = named_data(model, train_x, "training data"), named_data(model, test_x, "test data")
        self.train = to_device(model, train_x, "training data", device)
        self.obs = observed_name(model, self.train)
        self.test = to_device(model, test_x, "test data", device) if test_x is not None else None
        check_arrays(model, self.train, self.test, self.obs)
        self.n = batch.num_rows(self.train)
        self.groups = batch.groups(self.train)
        check_batch_size(self.n, batch_size)
        distributed.check_batches(batch_size, [len(g["rows"]) for g in self.groups])
        self.mapped = any(isinstance(v, MappedRows) for v in self.train.values())
        self.num_batches = sum(math.ceil(len(g["rows"]) / batch_size) for g in self.groups)

    def check_support(self) -> None:
        """The observations against the likelihood's support, once: Pyro stops checking once validation is off."""
        lik = self.model.likelihood
        if self.binarize != "dynamic":
            check_support_chunked(lik, batch.observed(self.train, self.obs), "the training data")
        if self.test is not None:
            check_support_chunked(lik, batch.observed(self.test, self.obs), "the test data")

    def prepare(self, check_support: bool) -> None:
        """Before the first step: the data's support checked (``check_support``), and what the likelihood reads off
        the training data."""
        if check_support:
            self.check_support()
        self.fit_likelihood()

    def fit_likelihood(self) -> None:
        """What a likelihood reads off the training data before its first step: a count law's library prior
        (models/counts.py), block by block; it keeps one it has (a resumed run's, from its checkpoint)."""
        fit_data = getattr(getattr(self.model, "likelihood", None), "fit_data", None)
        if fit_data is not None:
            fit_data(block for _, block in row_blocks(batch.observed(self.train, self.obs)))

    def plan(self, perm: torch.Tensor) -> list:
        """The epoch's batches as (row indices, absent names); in-memory data is gathered on the device."""
        return epoch_batches(perm, self.groups, self.batch_size, None if self.mapped else self.device)

    def rows(self, idx: torch.Tensor, absent) -> object:
        """The batch of rows ``idx`` (without its absent arrays), on the device, binarized as the fit asks."""
        x = batch.without(batch.rows(self.train, idx), absent)
        if self.mapped:
            x = {k: v.to(self.device, non_blocking=True) for k, v in x.items()}
        if self.binarize == "dynamic":
            x = batch.replace(x, self.obs, torch.bernoulli(batch.observed(x, self.obs)))
        return x


def check_arrays(model, train, test, obs: Optional[str]) -> None:
    """The arrays of a fit's data against the model and each other, wherever the data lie (a caller that makes a
    run folder checks them before it does): the observations' width, present in every training row, and a test
    set whole."""
    check_width(model, train, obs, "training data")
    if test is not None:
        check_width(model, test, obs, "test data")
    if any(obs in g["absent"] for g in batch.groups(train)):
        raise PyroVAEError(f"training data[{obs!r}] holds the observations but has missing rows (-1 or "
                           "NaN throughout): drop those rows; only labels and inputs may be missing")
    if test is not None and len(batch.groups(test)) > 1:
        raise PyroVAEError("the test data has arrays that are missing (-1 or NaN) in some rows only: give the test "
                           "set whole (every label), or leave the partly missing array out of it")


def check_width(model, x, obs: Optional[str], what: str) -> None:
    """Named arrays: the observations' array has the model's columns (one array: :func:`to_device` checks it)."""
    dim = getattr(model, "data_dim", None)
    if len(x) == 1 or dim is None:
        return
    o = batch.observed(x, obs)
    if o.dim() != 2 or o.shape[1] != dim:
        raise PyroVAEError(f"{what}[{obs!r}] has shape {tuple(o.shape)} but the model "
                           f"expects {dim} columns: use data that matches the model")


def to_device(model, x, what: str, device: torch.device):
    """Named arrays ``x`` checked and on ``device``: one array (the observations) a non-empty finite matrix of the
    model's width, named as the user handed it in (a memory map stays put); several, by :func:`check_width`."""
    if len(x) != 1:
        return batch.prepare(x, what, device, torch.float32)  # its width: check_width
    (name, x), = x.items()
    return {name: _matrix_to_device(model, x, what, device)}


def _matrix_to_device(model, x, what: str, device: torch.device):
    mapped = isinstance(x, MappedRows)
    if not mapped:
        if not isinstance(x, torch.Tensor):
            raise PyroVAEError(f"{what} must be a torch.Tensor (use pyro_vae.load_data or torch.as_tensor)")
        if x.dim() != 2 or x.shape[0] == 0:
            raise PyroVAEError(f"{what} must be a non-empty (rows, columns) matrix, got shape {tuple(x.shape)}")
    dim = getattr(model, "data_dim", None)
    if dim is not None and x.shape[1] != dim:
        raise PyroVAEError(
            f"{what} has shape {tuple(x.shape)} but the model expects {dim} columns: "
            "use data that matches the model, or build the model for this data"
        )
    if mapped:
        # stays on the host, read a batch at a time (finiteness was checked chunk by chunk)
        return x
    x = x.to(device, torch.float32)
    if not all_finite(x):  # one pass, no data-sized temporaries (torch.isfinite makes three)
        # caught here, not as a NaN loss (or a distribution's argument error) steps later
        raise PyroVAEError(
            f"{what} has {describe_nonfinite(x)}: clean it, or load it with pyro_vae.load_data "
            "and data.drop_nonfinite = true"
        )
    return x


def check_batch_size(rows: int, batch_size: int) -> None:
    if rows < batch_size:
        raise PyroVAEError(
            f"the training data has {rows} rows, fewer than one batch (train.batch_size = {batch_size}): "
            "lower train.batch_size or add data"
        )


def example_batch(x, binarize: str = "none", size: int = 64, obs: Optional[str] = None, group=None):
    """A few rows (of one row group of named data) to build and sanity-check the model on, binarized like training batches."""
    if group is not None:
        x = batch.without(batch.rows(x, group["rows"][:size]), group["absent"])
    else:
        x = batch.rows(x, slice(0, min(batch.num_rows(x), size)))
    if binarize == "dynamic":
        o = batch.observed(x, obs)
        with isolated_rng(0, o.device):
            x = batch.replace(x, obs, torch.bernoulli(o))
    return x


def head(x, k: int):
    """The first ``k`` rows of ``x`` (all of them when it has fewer)."""
    return batch.rows(x, slice(0, min(batch.num_rows(x), k)))


def epoch_batches(perm: torch.Tensor, groups, batch_size: int, device=None):
    """The epoch's batches as (row indices on ``device``, absent names), from its permutation.

    One row group (no missing arrays): consecutive slices of ``perm``.  Several:
    rows are dealt in ``perm`` order to their group's open batch, and a batch
    is emitted when full (the groups' last, short batches at the end), so
    batches never mix labelled and unlabelled rows and the order needs no
    random stream beyond the permutation (an exact resume rebuilds it).
    """
    if len(groups) == 1:
        absent = groups[0]["absent"]
        return [(idx, absent) for idx in perm.to(device).split(batch_size)]  # one transfer, then views
    n = int(perm.numel())
    owner = torch.empty(n, dtype=torch.long)
    for i, g in enumerate(groups):
        owner[g["rows"]] = i
    open_rows = [[] for _ in groups]
    out = []
    for r, o in zip(perm.tolist(), owner[perm].tolist()):
        open_rows[o].append(r)
        if len(open_rows[o]) == batch_size:
            out.append((torch.tensor(open_rows[o], device=device), groups[o]["absent"]))
            open_rows[o] = []
    out.extend((torch.tensor(rows, device=device), groups[o]["absent"]) for o, rows in enumerate(open_rows) if rows)
    return out
