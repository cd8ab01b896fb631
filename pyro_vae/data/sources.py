"""Data sources (digits, Fashion-MNIST/MNIST IDX files, arrays, synthetic, sequences) and load_data, which checks what they load.

Every source returns a :class:`~pyro_vae.data.arrays.Dataset`: float32 train/test
matrices (one row per data point), an optional image shape, optional labels,
and notes about what was changed (casts, dropped rows).  Validation happens as
a source loads (data/arrays.py reads and checks the files), before any model
exists, so bad data fails in one line that names the file and the fix.
With ``data.labels`` a labelled source hands named data instead:
``{"x": images, NAME: labels}``, a share of the training labels kept.

Training data stays on the training device and is batched by index
(``x[perm[i:i+B]]``): no per-item ``DataLoader``, no per-batch host copies.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError
from . import batch
from .arrays import Dataset, as_matrix, load_array, read_array, read_idx
from .checks import check_integer_rows, in_unit_interval
from .corpus import corpus_truth, synthetic_corpus
from .files import os_problem
from .mapped import MappedRows, mapped_matrix, memmap_limit
from .named import load_named, named_arrays, read_named
from .sequences import load_sequences, read_sequences
from .sizes import check_synthetic_size
from .names import gene_names, names_key, pixel_names, read_column_names
from .sparse import is_sparse_file, sparse_rows
from .synthetic_counts import synthetic_counts
from .synthetic_sequences import chorales, linear_gaussian, pendulum
from ..registry import Registry

SOURCES: Registry = Registry("data source")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SOURCES = ("digits", "fashion-mnist", "mnist")
#: count likelihoods: an image source hands them its raw levels (digits 0..16), as it does a categorical one, and a
#: file's values are checked to be counts before the split (so a bad one is named by the file's row)
COUNT_LIKELIHOODS = ("poisson", "negative_binomial", "zinb", "zip", "multinomial")
#: what a source is told of the likelihood (``discrete``): a count likelihood's name (truthy), True (categorical) or
#: False; a multinomial's rows also need a total above 0
MULTINOMIAL = "multinomial"
MAPPED_TEST_ROWS = 10000  # test rows copied from a memory-mapped file when nothing is held out


def _split(x: torch.Tensor, labels, fraction: float, seed: int):
    n = x.shape[0]
    n_test = int(round(n * fraction))
    if n_test == 0:
        if isinstance(x, MappedRows):  # evaluation takes a tensor: not the whole file
            k = min(n, MAPPED_TEST_ROWS)
            return x, x[:k], labels, None, [
                f"no held-out data (data.test_fraction = 0): test metrics use the first {k} training rows"]
        return x, x, labels, labels, ["no held-out data (data.test_fraction = 0): test metrics use the training data"]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    te, tr = perm[:n_test], perm[n_test:]
    if tr.numel() == 0:
        raise PyroVAEError(f"data.test_fraction = {fraction} leaves no training rows: lower it")
    lab = (None, None) if labels is None else (labels[tr], labels[te])
    if isinstance(x, MappedRows):
        # the same split and row order as in memory; the training rows stay in the map
        return x.take(tr.numpy()), x[te], lab[0], lab[1], []
    return x[tr], x[te], lab[0], lab[1], []


@SOURCES.register("digits")
def _digits(cfg, discrete: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    if not discrete:
        x = x / 16.0
    tr, te, ltr, lte, notes = _split(x, torch.tensor(d.target), cfg.test_fraction, cfg.split_seed)
    return Dataset(tr, te, "digits", (8, 8), ltr, lte, notes=notes)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise PyroVAEError(
        f"no {stem}[.gz] in {str(folder)!r}: set data.path to the folder with the IDX files"
        + (" (on Debian: apt-get install dataset-fashion-mnist)" if str(folder) == FASHION_MNIST_DIR else "")
    )


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def _idx_source(name: str, default_dir: Optional[str], class_names: Optional[Tuple[str, ...]] = None):
    def load(cfg, discrete: bool):
        folder = cfg.path or default_dir
        if folder is None:
            raise PyroVAEError(f"data.source = {name!r} needs data.path, the folder with its IDX files")
        folder = Path(folder)
        try:
            is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
        except FileNotFoundError:
            is_dir = False
        except OSError as e:  # e.g. a name too long for the file system
            raise PyroVAEError(f"data.path {str(folder)!r} cannot be used ({os_problem(e)}): "
                               "set data.path to the IDX folder") from None
        if not is_dir:
            hint = " (on Debian: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
            raise PyroVAEError(f"data.path {str(folder)!r} is not a folder{hint}: set data.path to the IDX folder")
        arrays = {}
        for k in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
            ndim = 3 if "images" in k else 1
            p = _find_idx(folder, f"{k}-idx{ndim}-ubyte")
            arrays[k] = read_idx(p)
            if arrays[k].ndim != ndim or arrays[k].shape[0] == 0:
                raise PyroVAEError(f"IDX file {str(p)!r} has shape {arrays[k].shape}, not {ndim}-D with at least one "
                                   "row: re-install or re-download it")
        for part in ("train", "t10k"):
            if len(arrays[f"{part}-images"]) != len(arrays[f"{part}-labels"]):
                raise PyroVAEError(
                    f"IDX files in {str(folder)!r}: {len(arrays[f'{part}-images'])} {part} images but "
                    f"{len(arrays[f'{part}-labels'])} labels: re-install or re-download them"
                )
        sizes = {part: "x".join(map(str, arrays[f"{part}-images"].shape[1:])) for part in ("train", "t10k")}
        if sizes["train"] != sizes["t10k"]:
            raise PyroVAEError(f"IDX files in {str(folder)!r}: the train images are {sizes['train']} but the test "
                               f"(t10k) images {sizes['t10k']}: give test images of the train images' size")
        scale = 1.0 if discrete else 255.0
        tr = torch.from_numpy(arrays["train-images"].reshape(len(arrays["train-images"]), -1).astype(np.float32) / scale)
        te = torch.from_numpy(arrays["t10k-images"].reshape(len(arrays["t10k-images"]), -1).astype(np.float32) / scale)
        shape = tuple(arrays["train-images"].shape[1:])
        return Dataset(tr, te, name, shape, torch.from_numpy(arrays["train-labels"].astype(np.int64)),
                       torch.from_numpy(arrays["t10k-labels"].astype(np.int64)), class_names=class_names)

    return load


SOURCES.register("fashion-mnist")(_idx_source("fashion-mnist", FASHION_MNIST_DIR, FASHION_MNIST_CLASSES))
SOURCES.register("mnist")(_idx_source("mnist", None))


def synthetic_truth(cfg) -> dict:
    """The generating parameters of the synthetic source (a fixed function of the seed)."""
    g = torch.Generator().manual_seed(cfg.split_seed + 12345)
    k, d, h = cfg.synthetic_latent_dim, cfg.synthetic_dim, 32
    return {
        "A": torch.randn(h, k, generator=g) * 1.5,
        "b": torch.randn(h, generator=g) * 0.5,
        "W": torch.randn(d, h, generator=g) / h**0.5,
        "noise": float(cfg.synthetic_noise),
    }


def synthetic_mean(truth: dict, z: torch.Tensor) -> torch.Tensor:
    """E[x | z] = W tanh(A z + b) of the synthetic source."""
    return torch.tanh(z @ truth["A"].T + truth["b"]) @ truth["W"].T


@SOURCES.register("synthetic")
def _synthetic(cfg, discrete: bool):
    """z ~ N(0, I_k), x | z ~ N(W tanh(A z + b), noise^2 I): a known non-linear latent model."""
    check_synthetic_size(cfg)  # before any of it is allocated
    truth = synthetic_truth(cfg)
    g = torch.Generator().manual_seed(cfg.split_seed)
    z = torch.randn(cfg.num_points, cfg.synthetic_latent_dim, generator=g)
    x = synthetic_mean(truth, z) + truth["noise"] * torch.randn(cfg.num_points, cfg.synthetic_dim, generator=g)
    tr, te, _, _, notes = _split(x, None, cfg.test_fraction, cfg.split_seed)
    return Dataset(tr, te, "synthetic", notes=notes, truth=truth)


@SOURCES.register("synthetic_corpus")
def _synthetic_corpus(cfg, discrete: bool):
    """Word counts of documents from a known LDA (data/corpus.py), with their generated vocabulary."""
    check_synthetic_size(cfg)
    x, truth = synthetic_corpus(cfg)
    tr, te, _, _, notes = _split(x, None, cfg.test_fraction, cfg.split_seed)
    return Dataset(tr, te, "synthetic_corpus", notes=notes, truth=truth, feature_names=truth["vocabulary"])


@SOURCES.register("synthetic_counts")
def _synthetic_counts(cfg, discrete: bool):
    """Negative-binomial (or, with data.synthetic_dropout, zero-inflated) counts of a known low-dimensional model
    (data/synthetic_counts.py; synthetic_counts_truth gives its parameters back)."""
    check_synthetic_size(cfg)
    x, truth = synthetic_counts(cfg)
    tr, te, _, _, notes = _split(x, None, cfg.test_fraction, cfg.split_seed)
    return Dataset(tr, te, "synthetic_counts", notes=notes, truth=truth, feature_names=gene_names(x.shape[1]))


def read_matrix(path, key: str, discrete, drop_nonfinite: bool, notes: list, transpose: bool = False) -> torch.Tensor:
    """Every row of one matrix file (.npy, .npz, .csv, or a sparse .mtx / SciPy .npz made dense), read into memory
    and checked as data.train's rows are (NaN/Inf and a count likelihood's integers, named by the file's row and
    column); ``key``: the name the user gave it (data.test, ``--data``); ``transpose``: data.transpose."""
    what = f"{key} ({Path(path).name})"
    if is_sparse_file(path):
        return sparse_rows(path, what, [], integer=discrete in COUNT_LIKELIHOODS,
                           nonzero_rows=discrete == MULTINOMIAL, transpose=transpose).dense(what)
    x = as_matrix(_transposed(read_array(path, key), transpose, what), what, drop_nonfinite, notes)
    if discrete in COUNT_LIKELIHOODS:
        check_integer_rows(x, what, nonzero_rows=discrete == MULTINOMIAL)
    return x


def _transposed(raw, transpose: bool, what: str):
    """``raw`` with its rows and columns swapped under data.transpose (a 2-D array only)."""
    if not transpose:
        return raw
    if raw.ndim != 2:
        raise PyroVAEError(f"data.transpose = true swaps a matrix's rows and columns, but {what} has shape "
                           f"{tuple(raw.shape)}: give a 2-D matrix or remove data.transpose")
    return raw.T


@SOURCES.register("arrays")
def _arrays(cfg, discrete: bool):
    if cfg.train is None:
        raise PyroVAEError("data.source = 'arrays' needs data.train = \"file.npy\" (.npy, .npz or .csv)")
    if cfg.arrays or isinstance(cfg.train, dict):
        return load_named(cfg)
    notes: list = []
    what = f"data.train ({Path(cfg.train).name})"
    if is_sparse_file(cfg.train):
        # a sparse matrix stays sparse: batches of rows are made dense as training draws them (data/sparse.py)
        x = sparse_rows(cfg.train, what, notes, integer=discrete in COUNT_LIKELIHOODS,
                        nonzero_rows=discrete == MULTINOMIAL, transpose=cfg.transpose)
        if cfg.test is None:
            tr, te, _, _, more = _split(x, None, cfg.test_fraction, cfg.split_seed)
            return Dataset(tr, te, Path(cfg.train).stem, notes=notes + more)
        xt = read_matrix(cfg.test, "data.test", discrete, cfg.drop_nonfinite, notes, cfg.transpose)
        if xt.shape[1] != x.shape[1]:
            raise PyroVAEError(f"data.test has {xt.shape[1]} columns but data.train has {x.shape[1]}: they must match")
        return Dataset(x, xt, Path(cfg.train).stem, notes=notes)
    # only a file too large to load is memory-mapped; anything smaller is read into memory now,
    # so rewriting the file later cannot touch the job
    raw, stamp = load_array(cfg.train, "data.train", map_large=not cfg.transpose)
    image_shape = tuple(raw.shape[1:]) if raw.ndim == 3 else None
    raw = _transposed(raw, cfg.transpose, what)
    if stamp is not None:
        # larger than the limit: train from the map a batch at a time (data/mapped.py)
        x = mapped_matrix(raw, what, cfg.drop_nonfinite, notes, stamp=stamp)
        notes.append(f"{what}: {raw.nbytes / 2**20:.3g} MiB is over the memory-map limit "
                     f"({memmap_limit() / 2**20:.3g} MiB, PYRO_VAE_MEMMAP_BYTES): training reads it a batch at a time")
    else:
        x = as_matrix(raw, what, cfg.drop_nonfinite, notes)
    if discrete in COUNT_LIKELIHOODS:
        check_integer_rows(x, what, nonzero_rows=discrete == MULTINOMIAL)
    if cfg.test is not None:
        xt = read_matrix(cfg.test, "data.test", discrete, cfg.drop_nonfinite, notes, cfg.transpose)
        if xt.shape[1] != x.shape[1]:
            raise PyroVAEError(
                f"data.test has {xt.shape[1]} columns but data.train has {x.shape[1]}: they must match"
            )
        return Dataset(x, xt, Path(cfg.train).stem, image_shape, notes=notes)
    tr, te, _, _, more = _split(x, None, cfg.test_fraction, cfg.split_seed)
    return Dataset(tr, te, Path(cfg.train).stem, image_shape, notes=notes + more)


SOURCES.register("synthetic_sequences")(linear_gaussian)
SOURCES.register("synthetic_pendulum")(pendulum)
SOURCES.register("synthetic_chorales")(chorales)
#: the sources of sequences (N, T, D): a model over time reads them, and only it
SEQUENCE_SOURCES = ("synthetic_sequences", "synthetic_pendulum", "synthetic_chorales")


# --------------------------------------------------------------------------
# labels passed to the program

#: the stream that picks the kept labels: seeded by split_seed, as the split is, yet apart from it
_LABEL_STREAM = 0x1ABE15


def kept_labels(labels: torch.Tensor, fraction: float, seed: int) -> Tuple[torch.Tensor, Optional[str]]:
    """(labels, note): all but a class-balanced share of ``labels`` set to ``batch.MISSING`` (None: all kept).

    Each class keeps round(fraction * n / classes) labels, at least one, at most
    its rows, as Kingma et al. (2014) keep an equal number of labels per class;
    which ones is a fixed function of ``seed``.
    """
    if fraction >= 1.0:
        return labels, None
    y = labels.numpy()
    classes = np.unique(y)
    per_class = max(1, int(round(fraction * len(y) / len(classes))))
    rng = np.random.default_rng([seed, _LABEL_STREAM])
    keep = np.zeros(len(y), dtype=bool)
    for c in classes:
        keep[rng.permutation(np.flatnonzero(y == c))[:per_class]] = True
    out = labels.clone()
    out[torch.from_numpy(~keep)] = batch.MISSING
    small = int(sum(int((y == c).sum()) < per_class for c in classes))
    fewer = ("" if not small else "; 1 class with fewer rows keeps all of its" if small == 1
             else f"; {small} classes with fewer rows keep all of theirs")
    note = (f"data: {int(keep.sum())} of {len(y)} training labels kept ({per_class} per class{fewer}); "
            f"the others are unlabelled ({batch.MISSING})")
    return out, note


def with_labels(ds: Dataset, data_cfg) -> Dataset:
    """``ds`` as named data ``{"x": images, data.labels: labels}``, a share of the training labels kept."""
    name = data_cfg.labels
    if ds.train_labels is None or ds.test_labels is None or ds.observed is not None:
        raise PyroVAEError(f"data.labels = {name!r}: data.source = {data_cfg.source!r} has no labels to pass: use a "
                           f"labelled source ({', '.join(IMAGE_SOURCES)}) or remove data.labels")
    train_y, note = kept_labels(ds.train_labels.to(torch.int64), data_cfg.label_fraction, data_cfg.split_seed)
    ds.train = {"x": ds.train, name: train_y}
    ds.test = {"x": ds.test, name: ds.test_labels.to(torch.int64)}
    ds.observed = "x"
    if note is not None:
        ds.notes.append(note)
    return ds


def resolve_binarize(data_cfg, likelihood: str) -> str:
    """``auto`` means dynamic binarization for image data under a Bernoulli likelihood, else none."""
    if data_cfg.binarize != "auto":
        return data_cfg.binarize
    return "dynamic" if likelihood == "bernoulli" and data_cfg.source in IMAGE_SOURCES else "none"


def _discrete(likelihood: str):
    return likelihood if likelihood in COUNT_LIKELIHOODS else likelihood == "categorical"


def load_file(data_cfg, path, likelihood: str = "normal", sequence: Optional[Tuple[str, ...]] = None,
              key: str = "--data"):
    """Every row of the one file ``path`` (``key``: the flag that named it), read exactly as ``data_cfg`` has
    data.train read: sequences with their lengths, a run's named arrays, a sparse matrix, or a matrix; the same
    checks.  Returns (data, notes)."""
    notes: list = []
    path = str(path)
    if sequence is not None:
        return read_sequences(path, sequence, key, data_cfg.drop_nonfinite, notes), notes
    if data_cfg.source == "arrays" and (data_cfg.arrays or isinstance(data_cfg.train, dict)):
        return read_named(path, named_arrays(data_cfg), key, data_cfg.drop_nonfinite, notes), notes
    return read_matrix(path, key, _discrete(likelihood), data_cfg.drop_nonfinite, notes, data_cfg.transpose), notes


def load_data(data_cfg, likelihood: str = "normal", sequence: Optional[Tuple[str, ...]] = None) -> Dataset:
    """Load and validate the data a :class:`~pyro_vae.config.DataConfig` names.

    ``sequence``: for a model over time, the arrays its nodes over time read (the observed node first): array
    files are then read as (N, T, D) sequences with their lengths (data/sequences.py).  A sequence source
    (``SEQUENCE_SOURCES``) always gives {"x": (N, T, D), "lengths": (N,)}."""
    discrete = _discrete(likelihood)
    if sequence is not None and data_cfg.source not in SEQUENCE_SOURCES + ("arrays",):
        raise PyroVAEError(f"the model is over time (a node has over = \"time\") but data.source = "
                           f"{data_cfg.source!r} holds no sequences: use {', '.join(SEQUENCE_SOURCES)} or sequence "
                           "arrays (data.train = \"file.npz\" with (N, T, D) arrays)")
    if sequence is not None and data_cfg.source == "arrays":
        if data_cfg.transpose:
            raise PyroVAEError("data.transpose = true swaps a matrix's rows and columns, but the model is over time "
                               "and reads (N, T, D) sequences: remove data.transpose")
        if data_cfg.train is None:
            raise PyroVAEError("data.source = 'arrays' needs data.train = \"file.npz\" (.npy or .npz)")
        ds = load_sequences(data_cfg, sequence)
    else:
        ds = SOURCES[data_cfg.source](data_cfg, discrete)
    if data_cfg.labels is not None:
        ds = with_labels(ds, data_cfg)  # before binarizing, which then binarizes the images alone
    mode = resolve_binarize(data_cfg, likelihood)
    if mode != "none":
        if mode == "static" and isinstance(ds.train, MappedRows):
            raise PyroVAEError(
                "data.binarize = 'static' would copy the memory-mapped training file: "
                "use data.binarize = 'dynamic', or binarize the file"
            )
        for what, x in (("train", ds.train_x), ("test", ds.test_x)):
            if not in_unit_interval(x):
                raise PyroVAEError(
                    f"data.binarize = {mode!r} needs {what} data in [0, 1]: rescale it or set data.binarize = 'none'"
                )
        g = torch.Generator().manual_seed(data_cfg.split_seed + 1)
        # the test set is always binarized once, with a fixed seed, so test
        # metrics of different runs are computed on the very same bits
        ds.set_observations("test", torch.bernoulli(ds.test_x, generator=g))
        if mode == "static":
            ds.set_observations("train", torch.bernoulli(ds.train_x, generator=g))
    ds.binarize = mode
    named = names_key(data_cfg)
    if named is not None:  # data.feature_names or data.vocabulary: the one file naming the columns
        # the data file's rows, before the split, name a features x cells file in the hint
        rows = int(ds.train_x.shape[0]) + (int(ds.test_x.shape[0]) if data_cfg.test is None and
                                           data_cfg.test_fraction > 0 else 0)
        ds.feature_names = read_column_names(named[1], ds.dim, named[0], rows=rows)
    elif ds.feature_names is None and ds.image_shape is not None and int(np.prod(ds.image_shape)) == ds.dim:
        ds.feature_names = pixel_names(tuple(ds.image_shape))
    return ds


def column_names(data_cfg, columns: int, image_shape=None) -> Optional[Tuple[str, ...]]:
    """The names of a run's ``columns`` data columns without loading its data (``evaluate --data``): its names
    file's, else those its source gives them (a synthetic source's genes or words, an image's pixels), else None."""
    named = names_key(data_cfg)
    if named is not None:
        return read_column_names(named[1], columns, named[0])
    if data_cfg.source == "synthetic_counts":
        return gene_names(columns)
    if data_cfg.source == "synthetic_corpus" and data_cfg.synthetic_dim == columns:
        return corpus_truth(data_cfg)["vocabulary"]
    if image_shape is not None and int(np.prod(image_shape)) == columns:
        return pixel_names(tuple(image_shape))
    return None

