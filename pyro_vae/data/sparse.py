"""Sparse count matrices: SciPy .npz (CSR/CSC/COO) and Matrix Market .mtx files, read a batch of rows at a time.

A single-cell or bag-of-words matrix is mostly zeros; its dense form can be many times the memory its
non-zeros take.  :func:`sparse_matrix` reads the file as a CSR matrix (never dense), checks its values
(NaN/Inf, and beyond float32, named by row and column), and :class:`SparseRows` hands the trainer
``x[idx]``, a dense float32 copy of just those rows, as :class:`~pyro_vae.data.mapped.MappedRows` does for a
memory-mapped file: everything that passes over the whole matrix (support checks, the library prior) goes
block by block.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import PyroVAEError
from .checks import check_dtype, row_total_problem
from .files import regular_file
from .mapped import MappedRows
from .sizes import check_fits

#: the members scipy.sparse.save_npz writes
_SPARSE_NPZ = {"data.npy", "format.npy", "shape.npy"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_sparse_file(path) -> bool:
    """Whether ``path`` names a sparse matrix file: Matrix Market ``.mtx`` (``.mtx.gz``) or a SciPy sparse ``.npz``."""
    p = Path(str(path))
    name = p.name.lower()
    if name.endswith(".mtx") or name.endswith(".mtx.gz"):
        return True
    if p.suffix.lower() != ".npz" or not p.is_file():
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            return _SPARSE_NPZ <= set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False  # the dense reader says what is wrong with it


def _where(m, k: int):
    """(row, column) of the ``k``-th stored value of a CSR matrix."""
    return int(np.searchsorted(m.indptr, k, side="right") - 1), int(m.indices[k])


def sparse_matrix(path, what: str):
    """The CSR matrix in ``path``, its stored values checked; one line naming the file and the fix on any problem."""
    import scipy.io
    import scipy.sparse

    p = Path(str(path))
    regular_file(p, what, "check data.train / data.test")
    try:
        if p.suffix.lower() == ".npz":
            m = scipy.sparse.load_npz(p)
        else:
            m = scipy.io.mmread(str(p))
            if not scipy.sparse.issparse(m):
                m = scipy.sparse.csr_matrix(m)
        m = scipy.sparse.csr_matrix(m)
    except PyroVAEError:
        raise
    except (ValueError, OSError, EOFError, KeyError, TypeError, IndexError, zipfile.BadZipFile, MemoryError) as e:
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise PyroVAEError(f"{what} file {str(p)!r} cannot be read as a sparse matrix ({text}): save it with "
                           "scipy.sparse.save_npz or scipy.io.mmwrite") from None
    check_dtype(m.dtype, what)
    if m.shape[0] == 0 or m.shape[1] == 0:
        raise PyroVAEError(f"{what} is empty (shape {tuple(m.shape)}): give at least one row and one column")
    m.sum_duplicates()  # a COO or .mtx file may list an entry twice: its value is their sum
    values = m.data.astype(np.float64, copy=False)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = _where(m, int(np.flatnonzero(bad)[0]))
        raise PyroVAEError(f"{what} has {int(bad.sum())} NaN/Inf values (first at row {r}, column {c}): clean the "
                           "data (a sparse file's rows are not dropped)")
    over = np.abs(values) > _FLOAT32_MAX
    if over.any():
        k = int(np.flatnonzero(over)[0])
        r, c = _where(m, k)
        raise PyroVAEError(f"{what} has values beyond float32's range (first at row {r}, column {c}: "
                           f"{values[k]:g}): rescale the data")
    return m


class SparseRows(MappedRows):
    """Rows ``rows`` (default: all) of a CSR matrix: ``x[idx]`` is a dense float32 tensor of those rows only."""

    def __init__(self, matrix, rows: Optional[np.ndarray] = None, what: str = "the sparse data"):
        super().__init__(np.empty((0, 0)), rows, None, what)
        self.array = matrix  # .shape and row indexing are all MappedRows reads of it

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            idx = np.arange(len(self))[key]
        else:
            idx = key.detach().cpu().numpy() if torch.is_tensor(key) else np.asarray(key)
            idx = idx.reshape(-1)
        if self.rows is not None:
            idx = self.rows[idx]
        return torch.from_numpy(self.array[idx].toarray().astype(np.float32, copy=False))

    def take(self, index: np.ndarray) -> "SparseRows":
        index = np.asarray(index, dtype=np.int64)
        return SparseRows(self.array, index if self.rows is None else self.rows[index], self.what)

    def dense(self, what: str) -> torch.Tensor:
        """All these rows as one dense tensor, where that fits in memory (a test set is evaluated whole)."""
        check_fits(4 * len(self) * self.array.shape[1], f"{what} as a dense matrix ({len(self)} x "
                   f"{self.array.shape[1]})", "hold out fewer rows (data.test_fraction) or a smaller test file")
        return self[:]

    def __repr__(self) -> str:
        nnz = self.array.nnz if self.rows is None else "?"
        return f"SparseRows(shape={tuple(self.shape)}, stored={nnz})"


def check_integer_values(m, what: str) -> None:
    """Integer data (counts, levels): every stored value a non-negative integer, the first that is not named by its
    row and column in the file."""
    values = m.data.astype(np.float64, copy=False)
    bad = (values < 0) | (values != np.round(values))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        r, c = _where(m, k)
        raise PyroVAEError(f"{what} has {int(bad.sum())} values that are not non-negative integers (first at row {r}, "
                           f"column {c}: {values[k]:g}), which a count likelihood needs: round or fix "
                           "the data, or use model.likelihood = 'normal'")


def sparse_rows(path, what: str, notes: list, integer: bool = False, nonzero_rows: bool = False,
                transpose: bool = False) -> SparseRows:
    """The rows of a sparse matrix file, for training a batch at a time (``integer``: checked to be counts, whose
    row totals a float32 holds, and, ``nonzero_rows``, with no row of zeros).  ``transpose``: the file's columns are
    the rows (a 10x matrix.mtx, features x cells), still sparse; a bad value is named by the file's row and column."""
    m = sparse_matrix(path, what)
    if integer:
        check_integer_values(m, what)
    if transpose:
        m = m.T.tocsr()  # sparse to sparse: the non-zeros re-indexed, never a dense copy
        notes.append(f"{what}: transposed (data.transpose = true): {m.shape[0]} rows of {m.shape[1]} columns")
    if integer:
        problem = row_total_problem(np.asarray(m.sum(axis=1, dtype=np.float64)).ravel(), 0, what, nonzero_rows)
        if problem:
            raise PyroVAEError(problem)
    density = m.nnz / max(1, m.shape[0] * m.shape[1])
    notes.append(f"{what}: a sparse {m.shape[0]} x {m.shape[1]} matrix ({100 * density:.3g}% stored): training "
                 "reads it a batch of rows at a time")
    return SparseRows(m, what=what)
