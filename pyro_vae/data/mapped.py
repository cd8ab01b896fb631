"""Training data larger than memory: rows of a memory-mapped ``.npy`` file, read a batch at a time.

A ``.npy`` training file bigger than :func:`memmap_limit` bytes is not loaded:
:class:`MappedRows` keeps ``np.load(mmap_mode='r')``'s map and hands the
trainer ``x[idx]`` — a float32 copy of just those rows, which the trainer moves
to the device.  The operating system pages the file in and out as batches
touch it, so resident memory stays bounded by the page cache, not the file.

Everything that used to look at the whole array (finiteness, support and
binarization range checks, the categorical level count) does so chunk by
chunk here, so no full-size temporary is ever made either.  The held-out
split is a row index into the same map (the test rows are copied: evaluation
takes tensors).

Only a file too large to load is mapped (smaller ones are read into memory at
once), and a map is only as good as the file under it: the file's size,
modification time and inode are recorded when it is mapped, and every read
checks them (:meth:`MappedRows.check_unchanged`), so a file rewritten under a
running job stops it with one line instead of training on new bytes.
"""

from __future__ import annotations

import os
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError
from .checks import CHUNK_BYTES, check_dtype, describe_too_large, float32_problems
from .files import FileStamp

#: files above this size train through the map (``PYRO_VAE_MEMMAP_BYTES`` overrides it)
MEMMAP_LIMIT_BYTES = 1 << 30


def memmap_limit() -> int:
    env = os.environ.get("PYRO_VAE_MEMMAP_BYTES")
    if env:
        try:
            return int(env)
        except ValueError:
            raise PyroVAEError(f"PYRO_VAE_MEMMAP_BYTES = {env!r}: expected a number of bytes") from None
    return MEMMAP_LIMIT_BYTES


class MappedRows:
    """Rows ``rows`` (default: all) of a 2-D numeric array, typically an ``np.memmap``.

    Supports what training needs of a data matrix: ``len``, ``shape``,
    ``x[index]`` / ``x[a:b]`` (a float32 tensor copy of those rows),
    :meth:`chunks` for passes over the data, and ``max``/``min``.
    """

    def __init__(self, array: np.ndarray, rows: Optional[np.ndarray] = None,
                 stamp: Optional[FileStamp] = None, what: str = "the memory-mapped data"):
        if array.ndim != 2:
            raise ValueError("MappedRows needs a 2-D array")
        self.array = array
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.checked: set = set()  # likelihoods whose support check these rows passed
        self.stamp = stamp  # the mapped file as it was when mapped (None: not a file)
        self.what = what

    def check_unchanged(self) -> None:
        """Raise one line if the mapped file was rewritten, resized or replaced since it was mapped.

        A stat call (microseconds): every row read calls it, so a changed file stops
        the job before its new bytes are trained on.  (A file truncated between this
        check and the read can still end the process with SIGBUS: the kernel gives a
        map no other way to say that its pages are gone.)
        """
        if self.stamp is None:
            return
        change = self.stamp.changes()
        if change is not None:
            raise PyroVAEError(
                f"{self.what} changed on disk while in use ({change}): a memory-mapped training file must stay "
                "as it was; restore it, or restart the run (without --resume) to train on the new file"
            )

    # -- the matrix interface ----------------------------------------------
    def __len__(self) -> int:
        return self.array.shape[0] if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.array.shape[1]))

    def dim(self) -> int:
        return 2

    ndim = property(dim)
    dtype = torch.float32
    device = torch.device("cpu")

    def __getitem__(self, key) -> torch.Tensor:
        self.check_unchanged()
        if isinstance(key, slice) and self.rows is None:
            # contiguous rows: one sequential read; a view of the map, so copy it
            return torch.from_numpy(np.array(self.array[key], dtype=np.float32, copy=True))
        if isinstance(key, slice):
            idx = self.rows[key]
        else:
            idx = key.detach().cpu().numpy() if torch.is_tensor(key) else np.asarray(key)
            if idx.ndim == 0:
                idx = idx.reshape(1)
            if self.rows is not None:
                idx = self.rows[idx]
        # fancy indexing reads just these rows into a new array; cast only if needed
        return torch.from_numpy(np.asarray(self.array[idx], dtype=np.float32))

    def take(self, index: np.ndarray) -> "MappedRows":
        """A view of some of these rows (no data is read)."""
        index = np.asarray(index, dtype=np.int64)
        return MappedRows(self.array, index if self.rows is None else self.rows[index], self.stamp, self.what)

    def chunks(self, max_bytes: Optional[int] = None) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(first_row, float32 block)`` over all rows, ``max_bytes`` (default :data:`CHUNK_BYTES`) at a time."""
        step = max(1, (max_bytes or CHUNK_BYTES) // (4 * max(1, self.array.shape[1])))
        for start in range(0, len(self), step):
            yield start, self[start : start + step]

    def max(self) -> torch.Tensor:
        return torch.stack([c.max() for _, c in self.chunks()]).max()

    def min(self) -> torch.Tensor:
        return torch.stack([c.min() for _, c in self.chunks()]).min()

    def __repr__(self) -> str:
        return f"MappedRows(shape={tuple(self.shape)}, dtype={self.array.dtype})"


def mapped_matrix(array: np.ndarray, what: str, drop_nonfinite: bool = False,
                  notes: Optional[list] = None, stamp: Optional[FileStamp] = None) -> MappedRows:
    """The checks of :func:`pyro_vae.data.as_matrix`, done chunk by chunk, without copying the data."""
    notes = notes if notes is not None else []
    check_dtype(array.dtype, what)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim > 2:
        array = array.reshape(array.shape[0], -1)  # a view of a C-ordered map
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise PyroVAEError(f"{what} is empty (shape {tuple(array.shape)}): give at least one row and one column")
    if array.dtype != np.float32:
        notes.append(f"{what}: {array.dtype} values are cast to float32 a batch at a time")
    x = MappedRows(array, stamp=stamp, what=what)
    bad_rows: List[np.ndarray] = []
    first = None
    # the file's own values, block by block: NaN/Inf told apart from values beyond float32's range
    step = max(1, CHUNK_BYTES // max(1, array.shape[1] * array.dtype.itemsize))
    for start in range(0, array.shape[0], step):
        block = np.asarray(array[start : start + step])
        bad, over = float32_problems(block)
        if bad is not None:
            rows = np.flatnonzero(bad.any(1)) + start
            if first is None:
                r, c = np.argwhere(bad)[0]
                first = (int(r) + start, int(c))
            bad_rows.append(rows)
            if over is not None:
                over &= ~bad.any(1, keepdims=True)  # rows that are dropped do not count
        if over is not None and over.any():
            raise PyroVAEError(describe_too_large(block, over, what, row_offset=start))
    if first is None:
        return x
    bad = np.concatenate(bad_rows)
    if not drop_nonfinite:
        raise PyroVAEError(
            f"{what} has NaN/Inf values in {len(bad)} rows (first at row {first[0]}, column {first[1]}): "
            "clean the data or set data.drop_nonfinite = true to drop those rows"
        )
    keep = np.setdiff1d(np.arange(len(x)), bad)
    if len(keep) == 0:
        raise PyroVAEError(f"{what}: every row has NaN/Inf values; nothing is left to train on")
    notes.append(f"{what}: dropped {len(bad)} rows with NaN/Inf")
    return x.take(keep)
