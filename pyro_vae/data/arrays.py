"""Arrays from files: checked readers (.npy, .npz, CSV, IDX), the checked in-memory matrix, and the Dataset a source hands out.

A :class:`Dataset` is what every data source hands out (data/sources.py,
data/named.py): float32 train/test matrices (one row per data point), or
named arrays, with what the source knows about them.  The readers check what
can be checked before a byte is read (a regular file, a known type, a header
that fits the file), so every damaged file fails in one line that names it.
"""

from __future__ import annotations

import gzip
import math
import mmap
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError
from .checks import check_dtype, describe_too_large, float32_problems
from .files import FileStamp, read_text, regular_file
from .mapped import memmap_limit
from .sizes import check_fits


@dataclass
class Dataset:
    """What a data source hands out: its train and test data, and what the source knows about them."""

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
    # named arrays from files: {"train" / "test": (the file's key, e.g. "data.train", each row's row in that file)}
    origins: Optional[Dict[str, Tuple[str, torch.Tensor]]] = None
    # each column's name (a gene, a word): data.feature_names or data.vocabulary (data/names.py), or a synthetic
    # corpus's generated words
    feature_names: Optional[Tuple[str, ...]] = None

    @property
    def vocabulary(self) -> Optional[Tuple[str, ...]]:
        """The columns' names read as a corpus's words: :attr:`feature_names`, the one field that names them."""
        return self.feature_names

    @property
    def train_x(self) -> torch.Tensor:
        """The training observations (the whole training data unless it is named arrays)."""
        return self.train[self.observed] if self.observed is not None else self.train

    @property
    def test_x(self) -> torch.Tensor:
        """The test observations (the whole test data unless it is named arrays)."""
        return self.test[self.observed] if self.observed is not None else self.test

    def set_observations(self, split: str, value: torch.Tensor) -> None:
        """Replace the observations of ``split`` ("train" or "test") by ``value`` (its other arrays stay)."""
        setattr(self, split, value if self.observed is None else {**getattr(self, split), self.observed: value})

    @property
    def dim(self) -> int:
        """The observations' number of columns (of values per step, for sequences)."""
        return self.train_x.shape[-1]

    @property
    def is_image(self) -> bool:
        """Whether the rows are images (``image_shape`` is known)."""
        return self.image_shape is not None


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
    return load_array(path, what, map_large=False, key=key, header=header)[0]


def load_array(path: str, what: str, map_large: bool, key: Optional[str] = None,
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
