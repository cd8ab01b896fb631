"""Named arrays from files (an .npz's arrays, a CSV's columns, or one file per name), checked and split alike.

A program written as ``model(x, y=None)`` takes its data by name; the first
name holds the observations (binarization and the likelihood's checks apply
to it), the others are conditioning inputs or labels.  Integer arrays stay
integers (a label indexes a one-hot table); -1 marks a missing label
(data/batch.py).  Every array is checked as the one-array path checks its
matrix, and the held-out split takes the same rows of every array.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError
from . import batch
from .arrays import Dataset, read_array
from .checks import check_dtype, describe_too_large, float32_problems


def _names(cfg) -> Tuple[str, ...]:
    return tuple(cfg.train) if isinstance(cfg.train, dict) else tuple(cfg.arrays)


def _read(spec, names, what: str) -> Dict[str, np.ndarray]:
    """{name: array} from one file (an .npz or a CSV with a header) or one file per name."""
    if isinstance(spec, dict):
        return {n: read_array(spec[n], f"{what}.{n} ({Path(spec[n]).name})", key=n if spec[n].endswith(".npz") and
                              _npz_has(spec[n], n) else None) for n in names}
    p = Path(spec)
    label = f"{what} ({p.name})"
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return {n: read_array(spec, label, key=n) for n in names}
    if suffix == ".csv":
        header: List[str] = []
        table = read_array(spec, label, header=header)
        if not header:
            raise PyroVAEError(f"{label} has no header row: with data.arrays, name the CSV's columns in a first row "
                               f"(a column named {names[1] if len(names) > 1 else 'y'!r} becomes that array)")
        out = {}
        for n in names[1:]:
            cols = [j for j, h in enumerate(header) if h == n or h.startswith(n + "[")]
            if not cols:
                raise PyroVAEError(f"{label} has no column named {n!r} (its columns: {', '.join(header[:12])}"
                                   f"{', ...' if len(header) > 12 else ''}): name a column {n!r}, or fix data.arrays")
            col = table[:, cols] if len(cols) > 1 else table[:, cols[0]]
            out[n] = col.astype(np.int64) if np.all(np.equal(np.mod(col, 1), 0)) else col
        used = {j for j, h in enumerate(header) for n in names[1:] if h == n or h.startswith(n + "[")}
        rest = [j for j in range(table.shape[1]) if j not in used]
        if not rest:
            raise PyroVAEError(f"{label}: no columns are left for the observations {names[0]!r}")
        return {names[0]: table[:, rest], **out}
    raise PyroVAEError(f"{label} is a {suffix} file, which holds one array, but data.arrays names "
                       f"{', '.join(names)}: use an .npz with those arrays, a CSV with a header, or data.train = "
                       "{name = \"file\", ...}")


def _npz_has(path: str, name: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return name + ".npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False  # read_array says what is wrong with the file


def _tensor(arr: np.ndarray, what: str, observations: bool) -> Tuple[torch.Tensor, np.ndarray]:
    """(tensor, rows with NaN/Inf) of one named array, in its own shape (the observations' 1-D array as a column)."""
    arr = np.asarray(arr)
    check_dtype(arr.dtype, what)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise PyroVAEError(f"{what} is empty (shape {arr.shape}): give one row per data point")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float32)
    if observations and arr.ndim == 1:
        arr = arr[:, None]  # one value per point: a column (every array keeps its own shape, sequences (N, T, D) too)
    if arr.dtype.kind in "iu":
        return torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64))), np.zeros(arr.shape[0], dtype=bool)
    flat = arr.reshape(arr.shape[0], -1)
    bad, too_large = float32_problems(flat)
    if too_large is not None and too_large.any():
        raise PyroVAEError(describe_too_large(flat, too_large, what))
    bad_rows = bad.any(axis=1) if bad is not None else np.zeros(arr.shape[0], dtype=bool)
    if not observations:
        bad_rows &= ~np.isnan(flat).all(axis=1)  # a row of NaN marks a missing label (data/batch.py)
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C")), bad_rows


def _checked(raw: Dict[str, np.ndarray], names, what: str, drop: bool,
             notes: list) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """(the arrays checked, each kept row's row number in the file): rows with NaN/Inf refused or dropped."""
    out, bads = {}, []
    for i, n in enumerate(names):
        out[n], b = _tensor(raw[n], f"{what}.{n}", observations=i == 0)
        bads.append(b)
    rows = {n: int(t.shape[0]) for n, t in out.items()}
    if len(set(rows.values())) > 1:
        raise PyroVAEError(f"{what}: the arrays have different numbers of rows "
                           f"({', '.join(f'{n}: {r}' for n, r in rows.items())}): give one row per data point in each")
    bad = np.logical_or.reduce(bads)  # a row with NaN/Inf in any array
    kept = torch.arange(next(iter(rows.values())))
    if bad.any():
        r = int(np.argmax(bad))
        if not drop:
            raise PyroVAEError(f"{what} has NaN/Inf values in {int(bad.sum())} rows (first at row {r}): clean the "
                               "data or set data.drop_nonfinite = true to drop those rows")
        keep = torch.from_numpy(~bad)
        out, kept = {n: t[keep] for n, t in out.items()}, kept[keep]
        notes.append(f"{what}: dropped {int(bad.sum())} rows with NaN/Inf")
        if not bool(keep.any()):
            raise PyroVAEError(f"{what}: every row has NaN/Inf values; nothing is left to train on")
    return out, kept


def read_named(spec, names, what: str, drop: bool, notes: list) -> Dict[str, torch.Tensor]:
    """The named arrays of one file (or one file per name), read and checked under the name ``what``."""
    return _checked(_read(spec, names, what), names, what, drop, notes)[0]


def named_arrays(cfg) -> Tuple[str, ...]:
    """The array names a DataConfig with data.arrays (or one file per name) reads, the observations first."""
    return _names(cfg)


def load_named(cfg) -> Dataset:
    """The Dataset of named arrays that ``cfg`` (a DataConfig with data.arrays or one file per name) names."""
    names = _names(cfg)
    notes: list = []
    name = Path(next(iter(cfg.train.values())) if isinstance(cfg.train, dict) else cfg.train).stem
    train, train_rows = _checked(_read(cfg.train, names, "data.train"), names, "data.train", cfg.drop_nonfinite, notes)
    # where each row came from, so that a bad value is named by its row in the file (a split permutes them)
    origins = {"train": ("data.train", train_rows), "test": ("data.train", train_rows)}
    if cfg.test is not None:
        test, test_rows = _checked(_read(cfg.test, names, "data.test"), names, "data.test", cfg.drop_nonfinite, notes)
        origins["test"] = ("data.test", test_rows)
        for n in names:
            if tuple(test[n].shape[1:]) != tuple(train[n].shape[1:]):
                raise PyroVAEError(f"data.test.{n} has shape {tuple(test[n].shape)} but data.train.{n} "
                                   f"{tuple(train[n].shape)}: the rows must match")
    else:
        n = batch.num_rows(train)
        n_test = int(round(n * cfg.test_fraction))
        if n_test == 0:
            test = train
            notes.append("no held-out data (data.test_fraction = 0): test metrics use the training data")
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
            if n_test >= n:
                raise PyroVAEError(f"data.test_fraction = {cfg.test_fraction} leaves no training rows: lower it")
            train, test = batch.rows(train, perm[n_test:]), batch.rows(train, perm[:n_test])
            origins = {"train": ("data.train", train_rows[perm[n_test:]]),
                       "test": ("data.train", train_rows[perm[:n_test]])}
    return Dataset(train, test, name, notes=notes, observed=names[0], origins=origins)
