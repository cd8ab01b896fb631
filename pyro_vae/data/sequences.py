"""Sequence data: (N, T, D) arrays with each sequence's length, read from .npy/.npz files and checked in one line each.

A model with a time axis (models/graph/sequence.py) takes named arrays: its
observed and input nodes' (N, T, width) arrays and ``lengths``, the number of
real steps of each sequence (all T when the file has none).  Steps beyond a
sequence's length are padding: they may hold anything (NaN included), are set
to 0 here, and the model masks them out.  What is refused, before anything is
written: a 2-D array where a sequence is declared, lengths below 1 or beyond
T, NaN/Inf inside a sequence's real steps, arrays whose N or T disagree.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import PyroVAEError
from . import batch
from .arrays import Dataset, read_array
from .checks import check_dtype, describe_too_large, float32_problems

#: the data array that holds each sequence's number of real steps (the rest of its T steps are padding)
LENGTHS = "lengths"


def step_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, T) booleans: True at each sequence's real steps."""
    return torch.arange(steps, device=lengths.device) < lengths.unsqueeze(-1)


def _not_sequence(name: str, shape, what: str) -> PyroVAEError:
    return PyroVAEError(f"{what}'s array {name!r} has shape {tuple(shape)}, a {len(shape)}-D array, but the model "
                        f"declares a sequence (over = \"time\"): give (sequences, steps, values) arrays, e.g. "
                        f"x[:, :, None] for one value per step")


def check_lengths(lengths, steps: int, rows: int, what: str) -> None:
    """``lengths``: one integer per sequence, in [1, ``steps``]; the first offender named."""
    if tuple(lengths.shape) != (rows,):
        raise PyroVAEError(f"{what}'s {LENGTHS!r} has shape {tuple(lengths.shape)}: give one length per sequence "
                           f"({rows})")
    lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() and not bool((lengths == lengths.round()).all()):
        raise PyroVAEError(f"{what}'s {LENGTHS!r} holds fractional numbers: give whole step counts")
    for bad, why, fix in ((lengths > steps, f"beyond the {steps} steps of the arrays", "pad the arrays to the longest "
                           "sequence, or fix the lengths"),
                          (lengths < 1, "below 1", "drop empty sequences (a sequence has at least one step)")):
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise PyroVAEError(f"{what}'s {LENGTHS!r} is {lengths[i].item():g} at sequence {i}, {why} "
                               f"({int(bad.sum())} sequences): {fix}")


def check_sequence_arrays(arrays: Mapping[str, torch.Tensor], observed: Sequence[str], inputs: Sequence[str],
                          widths: Mapping[str, int], what: str = "the data") -> None:
    """One line naming the array and the fix when ``arrays`` do not fit a model over time: each observed and input
    node's (N, T, width) array, and ``lengths`` (optional) in [1, T]."""
    for name in list(observed) + list(inputs):
        if name not in arrays:
            raise PyroVAEError(f"model.nodes.{name} is over time but {what} has no array {name!r} (it has "
                               f"{', '.join(arrays)}): name the arrays after the graph's nodes")
    extra = [n for n in arrays if n not in observed and n not in inputs and n != LENGTHS]
    if extra:
        raise PyroVAEError(f"{what} has an array {extra[0]!r} that no node of the graph reads: add a node "
                           f"[model.nodes.{extra[0]}] (over = \"time\") or drop it")
    first = observed[0]
    rows, steps = None, None
    for name in list(observed) + list(inputs):
        v = arrays[name]
        if len(v.shape) != 3:
            raise _not_sequence(name, v.shape, what)
        if v.shape[2] != widths[name]:
            raise PyroVAEError(f"model.nodes.{name}: {what}'s array {name!r} has shape {tuple(v.shape)}, but the "
                               f"node takes {widths[name]} values per step: fix its dim or the data")
        if rows is None:
            rows, steps = int(v.shape[0]), int(v.shape[1])
        elif (int(v.shape[0]), int(v.shape[1])) != (rows, steps):
            raise PyroVAEError(f"{what}'s array {name!r} has shape {tuple(v.shape)} but {first!r} has {rows} "
                               f"sequences of {steps} steps: give every array over time the same N and T")
    if steps == 0:
        raise PyroVAEError(f"{what}'s array {first!r} has 0 steps: give sequences of at least one step")
    if LENGTHS in arrays:
        check_lengths(arrays[LENGTHS], steps, rows, what)


def _npz_names(path: str) -> Tuple[str, ...]:
    try:
        with zipfile.ZipFile(path) as zf:
            return tuple(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
    except (OSError, zipfile.BadZipFile):
        return ()  # read_array says what is wrong with the file


def _read(spec, names: Sequence[str], what: str) -> Dict[str, np.ndarray]:
    """{name: array} of the sequence arrays in ``spec``: one .npy (the observations), an .npz or one file per name;
    ``lengths`` too where the file has it."""
    if isinstance(spec, Mapping):
        return {n: read_array(spec[n], f"{what}.{n} ({Path(spec[n]).name})",
                              key=n if spec[n].lower().endswith(".npz") else None) for n in spec}
    p = Path(spec)
    label = f"{what} ({p.name})"
    if p.suffix.lower() == ".npy":
        if len(names) > 1:
            raise PyroVAEError(f"{label} holds one array, but the model reads {', '.join(names)}: use an .npz "
                               "holding them (and lengths), or data.train = {name = \"file\", ...}")
        return {names[0]: read_array(spec, label)}
    if p.suffix.lower() != ".npz":
        raise PyroVAEError(f"{label}: sequences are read from .npy or .npz files (a CSV holds rows, not sequences)")
    out = {n: read_array(spec, label, key=n) for n in names}
    if LENGTHS in _npz_names(spec) and LENGTHS not in out:
        out[LENGTHS] = read_array(spec, label, key=LENGTHS)
    return out


def _sequences(raw: Dict[str, np.ndarray], names: Sequence[str], what: str, drop: bool,
               notes: list) -> Dict[str, torch.Tensor]:
    """The arrays as tensors: lengths checked, padding set to 0, sequences with NaN/Inf in a real step refused
    (or dropped, with ``drop``)."""
    for name in names:
        check_dtype(raw[name].dtype, f"{what}.{name}")
        if raw[name].ndim != 3:
            raise _not_sequence(name, raw[name].shape, what)
    n, steps = raw[names[0]].shape[:2]
    for name in names[1:]:
        if raw[name].shape[:2] != (n, steps):
            raise PyroVAEError(f"{what}'s array {name!r} has shape {raw[name].shape} but {names[0]!r} has {n} "
                               f"sequences of {steps} steps: give every array over time the same N and T")
    if n == 0 or steps == 0:
        raise PyroVAEError(f"{what}'s array {names[0]!r} is empty (shape {raw[names[0]].shape}): give sequences")
    if LENGTHS in raw:
        lengths = np.asarray(raw[LENGTHS])
        check_dtype(lengths.dtype, f"{what}.{LENGTHS}")
        if lengths.dtype.kind == "f" and not np.isfinite(lengths).all():
            raise PyroVAEError(f"{what}'s {LENGTHS!r} has NaN/Inf values: give whole step counts")
        lengths_t = torch.from_numpy(lengths.astype(np.float64) if lengths.dtype.kind == "f" else lengths.astype(np.int64))
        check_lengths(lengths_t, steps, n, what)
        lengths_t = lengths_t.long()
    else:
        lengths_t = torch.full((n,), steps, dtype=torch.long)
    real = step_mask(lengths_t, steps).numpy()
    out, bad = {}, np.zeros(n, dtype=bool)
    for name in names:
        arr = np.asarray(raw[name])
        if arr.dtype.kind == "b":
            arr = arr.astype(np.float32)
        arr = np.where(real[:, :, None], arr, 0)  # padding may hold anything: it is masked out
        flat = arr.reshape(n, -1)
        nonfinite, too_large = float32_problems(flat)
        if too_large is not None and too_large.any():
            raise PyroVAEError(describe_too_large(flat, too_large, f"{what}.{name}"))
        if nonfinite is not None and nonfinite.any():
            rows = nonfinite.reshape(arr.shape).any(axis=2)
            i, t = (int(k) for k in np.argwhere(rows)[0])
            if not drop:
                raise PyroVAEError(f"{what}'s array {name!r} has NaN/Inf inside the real steps of "
                                   f"{int(rows.any(1).sum())} sequences (first at sequence {i}, step {t}, within its "
                                   f"length {int(lengths_t[i])}): clean the data, or set data.drop_nonfinite = true "
                                   "to drop those sequences")
            bad |= rows.any(1)
        out[name] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))
    out[LENGTHS] = lengths_t
    if bad.any():
        keep = torch.from_numpy(~bad)
        if not bool(keep.any()):
            raise PyroVAEError(f"{what}: every sequence has NaN/Inf values in its real steps; nothing is left")
        out = batch.rows(out, keep)
        notes.append(f"{what}: dropped {int(bad.sum())} sequences with NaN/Inf in their real steps")
    return out


def read_sequences(spec, names: Sequence[str], what: str, drop: bool, notes: list) -> Dict[str, torch.Tensor]:
    """The sequence arrays ``names`` (and ``lengths``) of one file, or one file per name, read and checked under the
    name ``what`` (data.train, data.test, ``--data``): the one reader of sequence files."""
    return _sequences(_read(spec, names, what), names, what, drop, notes)


def pad_steps(data: Dict[str, torch.Tensor], names: Sequence[str], steps: int) -> Dict[str, torch.Tensor]:
    """The arrays over time ``names`` padded with zeros to ``steps`` steps (their lengths unchanged)."""
    out = dict(data)
    for n in names:
        v = data[n]
        if v.shape[1] < steps:
            out[n] = torch.cat([v, v.new_zeros((v.shape[0], steps - v.shape[1]) + tuple(v.shape[2:]))], dim=1)
    return out


def split_sequences(data: Dict[str, torch.Tensor], fraction: float, seed: int, notes: list):
    """(train, test): a held-out share of the sequences, the same rows of every array, seeded."""
    n = batch.num_rows(data)
    n_test = int(round(n * fraction))
    if n_test == 0:
        notes.append("no held-out data (data.test_fraction = 0): test metrics use the training data")
        return data, data
    if n_test >= n:
        raise PyroVAEError(f"data.test_fraction = {fraction} leaves no training sequences: lower it")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return batch.rows(data, perm[n_test:]), batch.rows(data, perm[:n_test])


def load_sequences(cfg, names: Sequence[str]) -> Dataset:
    """The sequences ``cfg`` (a DataConfig of source "arrays") names, as named arrays: ``names`` (the observed
    node first, then the inputs over time) and ``lengths``."""
    names = tuple(names)
    listed = tuple(cfg.train) if isinstance(cfg.train, Mapping) else tuple(cfg.arrays)
    wanted = tuple(n for n in listed if n != LENGTHS) or names
    if set(wanted) != set(names):
        raise PyroVAEError(f"data.arrays names {', '.join(listed)} but the model's nodes over time read "
                           f"{', '.join(names)} (and optionally {LENGTHS}): name the arrays after the nodes")
    notes: list = []
    train = read_sequences(cfg.train, names, "data.train", cfg.drop_nonfinite, notes)
    if cfg.test is not None:
        test = read_sequences(cfg.test, names, "data.test", cfg.drop_nonfinite, notes)
        for n in names:
            if test[n].shape[2] != train[n].shape[2]:
                raise PyroVAEError(f"data.test.{n} has {test[n].shape[2]} values per step but data.train.{n} "
                                   f"{train[n].shape[2]}: they must match")
        # one T for both (the padding is masked out): the chain's step sites are then the same in training and
        # in its test evaluations, so that a KL weight scales the same sites
        steps = max(train[names[0]].shape[1], test[names[0]].shape[1])
        train, test = pad_steps(train, names, steps), pad_steps(test, names, steps)
    else:
        train, test = split_sequences(train, cfg.test_fraction, cfg.split_seed, notes)
    stem = Path(next(iter(cfg.train.values())) if isinstance(cfg.train, Mapping) else cfg.train).stem
    return Dataset(train, test, stem, notes=notes, observed=names[0])


def sequence_dataset(name: str, x: torch.Tensor, lengths: Optional[torch.Tensor], cfg, truth: Optional[dict] = None,
                     extra: Optional[Dict[str, torch.Tensor]] = None) -> Dataset:
    """A synthetic source's sequences as a Dataset of named arrays {"x", "lengths"}, padding set to 0, split."""
    n, steps = x.shape[:2]
    lengths = torch.full((n,), steps, dtype=torch.long) if lengths is None else lengths.long()
    x = x * step_mask(lengths, steps).unsqueeze(-1).to(x.dtype)
    data = {"x": x.float(), **(extra or {}), LENGTHS: lengths}
    notes: list = []
    train, test = split_sequences(data, cfg.test_fraction, cfg.split_seed, notes)
    return Dataset(train, test, name, notes=notes, observed="x", truth=truth)
