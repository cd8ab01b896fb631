"""Data sources (digits, Fashion-MNIST/MNIST IDX files, arrays, synthetic) and load_data, which checks what they load.

Every source returns a :class:`Dataset`: float32 train/test matrices (one row
per data point), an optional image shape, optional labels, and notes about
what was changed (casts, dropped rows).  Validation happens here, before any
model exists, so bad data fails in one line that names the file and the fix.
With ``data.labels`` a labelled source hands named data instead:
``{"x": images, NAME: labels}``, a share of the training labels kept.

Training data stays on the training device and is batched by index
(``x[perm[i:i+B]]``): no per-item ``DataLoader``, no per-batch host copies.
"""

from __future__ import annotations

import gzip
import math
import mmap
import os
import stat
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError
from . import batch
from .checks import check_dtype, describe_too_large, float32_problems, in_unit_interval
from .files import FileStamp, os_problem, read_text, regular_file
from .mapped import MappedRows, mapped_matrix, memmap_limit
from .sizes import check_fits, check_synthetic_size
from ..registry import Registry

SOURCES: Registry = Registry("data source")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SOURCES = ("digits", "fashion-mnist", "mnist")
MAPPED_TEST_ROWS = 10000  # test rows copied from a memory-mapped file when nothing is held out


@dataclass
class Dataset:
    train: torch.Tensor  # or mapped.MappedRows (a .npy over the memory-map limit), or named arrays (data/batch.py)
    test: torch.Tensor
    name: str = "data"
    image_shape: Optional[Tuple[int, int]] = None
    # the source's labels, complete (with data.labels, train[NAME] holds the ones training sees)
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    binarize: str = "none"  # "dynamic": resample train batches each step
    notes: List[str] = field(default_factory=list)
    truth: Optional[dict] = None  # synthetic source: the generating parameters
    class_names: Optional[Tuple[str, ...]] = None  # the name of label 0, 1, ... (plot legends); None: the numbers
    observed: Optional[str] = None  # named arrays: the one holding the observations

    @property
    def train_x(self) -> torch.Tensor:
        """The training observations (the whole training data unless it is named arrays)."""
        return self.train[self.observed] if self.observed is not None else self.train

    @property
    def test_x(self) -> torch.Tensor:
        return self.test[self.observed] if self.observed is not None else self.test

    @property
    def dim(self) -> int:
        return self.train_x.shape[1]

    @property
    def is_image(self) -> bool:
        return self.image_shape is not None


# --------------------------------------------------------------------------
# validation



def as_matrix(array, what: str, drop_nonfinite: bool = False, notes: Optional[list] = None) -> torch.Tensor:
    """Validate an array-like as a non-empty finite float32 matrix (rows = points), held in memory."""
    notes = notes if notes is not None else []
    arr = np.asarray(array)
    check_dtype(arr.dtype, what)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PyroVAEError(f"{what} is empty (shape {tuple(np.shape(array))}): give at least one row and one column")
    bad, too_large = float32_problems(arr)
    if bad is not None:
        bad_rows = bad.any(axis=1)
        r, c = np.argwhere(bad)[0]
        if not drop_nonfinite:
            raise PyroVAEError(
                f"{what} has {int(bad.sum())} NaN/Inf values in {int(bad_rows.sum())} rows "
                f"(first at row {r}, column {c}): clean the data or set data.drop_nonfinite = true to drop those rows"
            )
        arr = arr[~bad_rows]
        too_large = None if too_large is None else too_large[~bad_rows]
        notes.append(f"{what}: dropped {int(bad_rows.sum())} rows with NaN/Inf")
        if arr.shape[0] == 0:
            raise PyroVAEError(f"{what}: every row has NaN/Inf values; nothing is left to train on")
    if too_large is not None and too_large.any():
        raise PyroVAEError(describe_too_large(arr, too_large, what))
    if arr.dtype != np.float32:
        notes.append(f"{what}: cast from {arr.dtype} to float32")
        arr = arr.astype(np.float32)
    # an array backed by a file (a memory map) is copied: rewriting the file must not change
    # or crash (SIGBUS) a running job; only MappedRows (mapped.py) trains from a map
    if _file_backed(arr) or not arr.flags.writeable:
        arr = np.array(arr, order="C", copy=True)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _file_backed(arr: np.ndarray) -> bool:
    base = arr
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


_CHECK_PATHS = "check data.train / data.test"


def read_array(path: str, what: str, key: Optional[str] = None, header: Optional[list] = None) -> np.ndarray:
    """Read ``.npy``, ``.npz`` (the array ``key``; default ``x``, else the only array) or ``.csv`` into memory.

    ``header``: a list that receives a CSV's header cells.
    """
    return _load_array(path, what, map_large=False, key=key, header=header)[0]


def _load_array(path: str, what: str, map_large: bool, key: Optional[str] = None,
                header: Optional[list] = None) -> Tuple[np.ndarray, Optional[FileStamp]]:
    """The array in ``path`` and, if it was memory-mapped (a ``.npy`` over :func:`memmap_limit`), its stamp.

    Everything that can be checked before reading is: the path is a regular file
    (not a FIFO or device that would block or never end), the type is known, and
    a ``.npy`` header's shape and dtype fit the file's size.  Every damaged
    file then fails in one line.
    """
    p = Path(path)
    st = regular_file(p, what, _CHECK_PATHS)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz", ".csv"):
        raise PyroVAEError(f"{what} file {str(p)!r} has an unsupported type {suffix!r}: use .npy, .npz or .csv")
    if suffix == ".csv":
        return _read_csv(p, what, header), None
    try:
        if suffix == ".npy":
            with open(p, "rb") as f:
                shape, dtype, data_bytes = _npy_header(f, what, p)
                offset = f.tell()
            if st.st_size - offset < data_bytes:
                raise PyroVAEError(
                    f"{what} file {str(p)!r} is truncated: its header says {shape} {dtype} ({data_bytes} bytes) "
                    f"but it holds {max(0, st.st_size - offset)}: re-create the file"
                )
            if map_large and data_bytes > memmap_limit():
                # too large to load: a map pages in the rows batches touch (mapped.py)
                return np.load(p, mmap_mode="r", allow_pickle=False), FileStamp.of(p, st)
            check_fits(data_bytes, f"{what} ({shape} {dtype})", "use a smaller file", memory=None)
            return np.load(p, allow_pickle=False), None
        return _read_npz(p, what, key), None
    except PyroVAEError:
        raise
    except _READ_ERRORS as e:
        raise PyroVAEError(f"{what} file {str(p)!r} cannot be read ({_reason(e)}): is it a valid {suffix} file?") from None


#: what numpy, zipfile and zlib raise on a damaged file (numpy parses a .npy header with the
#: tokenizer and ast.literal_eval, hence TokenError, SyntaxError and RecursionError)
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError, tokenize.TokenError,
                RecursionError, MemoryError, struct.error, KeyError, TypeError, OverflowError, NotImplementedError)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the library wrote
    return text if len(text) <= 200 else text[:200] + "..."


def _npy_header(f, what: str, p: Path):
    """(shape, dtype, data bytes) from an open ``.npy`` stream; its dtype checked (no pickles, no text)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)  # 2.0 and 3.0 share this layout
    check_dtype(dtype, what)
    return shape, dtype, math.prod(shape) * dtype.itemsize


def _read_npz(p: Path, what: str, key: Optional[str] = None) -> np.ndarray:
    """The array ``key`` of an ``.npz`` (default: ``x``, else the only one)."""
    with zipfile.ZipFile(p) as zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if not names:
            raise PyroVAEError(f"{what} file {str(p)!r} holds no arrays")
        if key is not None and key not in names:
            raise PyroVAEError(f"{what} file {str(p)!r} holds no array named {key!r} (it has {', '.join(names)}): "
                               "save it under that name, or fix data.arrays")
        if key is None:
            key = "x" if "x" in names else names[0] if len(names) == 1 else None
        if key is None:
            raise PyroVAEError(
                f"{what} file {str(p)!r} holds several arrays ({', '.join(names)}) and none is named 'x': save the data as 'x'"
            )
        info = zf.getinfo(key + ".npy")
        with zf.open(info) as f:
            shape, dtype, data_bytes = _npy_header(f, f"{what} (array {key!r})", p)
            if info.file_size - f.tell() < data_bytes:
                raise PyroVAEError(
                    f"{what} file {str(p)!r}: array {key!r} is truncated (its header says {shape} {dtype}, "
                    f"{data_bytes} bytes): re-create the file"
                )
        check_fits(data_bytes, f"{what} ({shape} {dtype})", "use a smaller file", memory=None)
        with zf.open(info) as f:  # from the start again: read_array reads the header itself
            return np.lib.format.read_array(f, allow_pickle=False)


def _read_csv(p: Path, what: str, header: Optional[list] = None) -> np.ndarray:
    """The numbers of a CSV file (a header row is skipped; its cells are appended to ``header`` if given)."""
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first cell
    rows = [line for line in read_text(p, what, _CHECK_PATHS).splitlines() if line.strip()]
    if not rows:
        raise PyroVAEError(f"{what} file {str(p)!r} is empty")
    skip = 0
    first = [c.strip() for c in rows[0].split(",")]
    if not all(_is_number(c) for c in first):
        skip = 1  # a header row
        if header is not None:
            header.extend(first)
    out = []
    for i, line in enumerate(rows[skip:], start=skip + 1):
        cells = [c.strip() for c in line.split(",")]
        for j, c in enumerate(cells):
            if not _is_number(c):
                raise PyroVAEError(
                    f"{what} file {str(p)!r} line {i}, column {j + 1} is not a number ({c!r}): remove text columns"
                )
        out.append([float(c) for c in cells])
    if not out:
        raise PyroVAEError(f"{what} file {str(p)!r} has a header but no data rows: add data below the header")
    widths = {len(r) for r in out}
    if len(widths) > 1:
        raise PyroVAEError(f"{what} file {str(p)!r} has rows of different lengths {sorted(widths)}: fix the CSV")
    return np.asarray(out, dtype=np.float64).reshape(len(out), -1)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------
# sources


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


#: IDX dtype codes (only unsigned bytes, the format of MNIST and Fashion-MNIST, are read)
_IDX_DTYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): MNIST's and Fashion-MNIST's format.

    The header is read and checked first (magic number, dtype, dimensions
    against the size of the data), so a damaged or foreign file fails in one
    line, and only the bytes the header promises are read.
    """
    path = Path(path)

    def corrupt(why: str) -> PyroVAEError:
        return PyroVAEError(f"IDX file {str(path)!r} is corrupt or not an IDX file ({why}): re-install or re-download it")

    st = regular_file(path, "IDX", "set data.path to the folder with the IDX files")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise corrupt(f"{len(head)} bytes, shorter than an IDX header")
            zero, dtype_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype_code not in _IDX_DTYPES:
                raise corrupt("bad magic number")
            if dtype_code != 0x08:
                raise corrupt(f"{_IDX_DTYPES[dtype_code]} values; only unsigned-byte IDX files are read")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise corrupt(f"the header is truncated: {ndim} dimensions announced")
            shape = struct.unpack(">" + "I" * ndim, dims)
            expected = math.prod(shape)  # exact: no int64 wrap-around for crafted dimensions
            if path.suffix != ".gz" and st.st_size - 4 - 4 * ndim != expected:
                raise corrupt(f"expected {expected} values, found {st.st_size - 4 - 4 * ndim}")
            check_fits(expected, f"IDX file {str(path)!r} (shape {shape})", "check the file", memory=None)
            raw = f.read(expected + 1)  # one more: a longer stream is as wrong as a shorter one
        if len(raw) != expected:
            raise corrupt(f"expected {expected} values, found {len(raw)}" + ("" if len(raw) <= expected else " or more"))
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    except PyroVAEError:
        raise
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as e:
        raise corrupt(_reason(e)) from None


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


@SOURCES.register("arrays")
def _arrays(cfg, discrete: bool):
    if cfg.train is None:
        raise PyroVAEError("data.source = 'arrays' needs data.train = \"file.npy\" (.npy, .npz or .csv)")
    if cfg.arrays or isinstance(cfg.train, dict):
        from .named import load_named

        return load_named(cfg)
    notes: list = []
    # only a file too large to load is memory-mapped; anything smaller is read into memory now,
    # so rewriting the file later cannot touch the job
    raw, stamp = _load_array(cfg.train, "data.train", map_large=True)
    image_shape = tuple(raw.shape[1:]) if raw.ndim == 3 else None
    what = f"data.train ({Path(cfg.train).name})"
    if stamp is not None:
        # larger than the limit: train from the map a batch at a time (data/mapped.py)
        x = mapped_matrix(raw, what, cfg.drop_nonfinite, notes, stamp=stamp)
        notes.append(f"{what}: {raw.nbytes / 2**20:.3g} MiB is over the memory-map limit "
                     f"({memmap_limit() / 2**20:.3g} MiB, PYRO_VAE_MEMMAP_BYTES): training reads it a batch at a time")
    else:
        x = as_matrix(raw, what, cfg.drop_nonfinite, notes)
    if cfg.test is not None:
        xt = as_matrix(read_array(cfg.test, "data.test"), f"data.test ({Path(cfg.test).name})", cfg.drop_nonfinite, notes)
        if xt.shape[1] != x.shape[1]:
            raise PyroVAEError(
                f"data.test has {xt.shape[1]} columns but data.train has {x.shape[1]}: they must match"
            )
        return Dataset(x, xt, Path(cfg.train).stem, image_shape, notes=notes)
    tr, te, _, _, more = _split(x, None, cfg.test_fraction, cfg.split_seed)
    return Dataset(tr, te, Path(cfg.train).stem, image_shape, notes=notes + more)


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


def load_data(data_cfg, likelihood: str = "normal") -> Dataset:
    """Load and validate the data a :class:`~pyro_vae.config.DataConfig` names."""
    discrete = likelihood == "categorical"
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
        ds.test = batch.replace(ds.test, ds.observed, torch.bernoulli(ds.test_x, generator=g))
        if mode == "static":
            ds.train = batch.replace(ds.train, ds.observed, torch.bernoulli(ds.train_x, generator=g))
    ds.binarize = mode
    return ds

