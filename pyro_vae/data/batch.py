"""Named data: a mapping of named tensors that share their rows, the one form data takes inside the library.

A program written as ``model(x)`` and one written as Pyro's examples write
conditional and semi-supervised models, ``model(x, y=None)``, are called
alike, by keyword: ``{"x": images, "y": labels}`` calls
``model(x=images, y=labels)``.  One tensor a user hands in is named once, where
it enters (``infer/data_name.py``: the model's first data parameter), and is
``{"x": tensor}`` from then on.  Row i of every tensor is data point i.

A name may be missing for some rows (unlabelled rows of a semi-supervised
set): an integer array marks them with -1 (scikit-learn's convention for
unlabelled targets), a float array (one-hot labels) with a row of NaN.  Such rows are never mixed with labelled ones in a
batch: a batch either holds the name or leaves it out, so the program sees
its default (``y=None``), exactly as Pyro's M2 example feeds its two loaders.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import PyroVAEError
from .checks import describe_nonfinite

Data = Dict[str, torch.Tensor]

#: the value that marks a missing entry of an integer array
MISSING = -1


def named(data, name: str, what: str = "the data") -> Data:
    """The data as a mapping of named arrays: a mapping as it is (NumPy arrays as tensors), one array (a tensor,
    a NumPy array, a memory map) as ``{name: array}``.

    The one place where one array becomes named data: every entry point calls it once, with the name the model
    takes its data by (``infer/data_name.py``).  Floating NumPy arrays come in torch's default dtype (float32:
    NumPy's float64 is only NumPy's default, and a program's networks are float32), integer labels stay
    integers.  An array of objects or strings is a one-line error naming ``what``.
    """
    def convert(v, key):
        if not isinstance(v, np.ndarray):
            return v
        if v.dtype.kind not in "biuf":
            label = what if key is None else f"{what}[{key!r}]"
            raise PyroVAEError(f"{label} is a NumPy array of {v.dtype} values, not numbers: give numeric arrays")
        v = np.ascontiguousarray(v)
        t = torch.from_numpy(v if v.flags.writeable else v.copy())  # torch warns on read-only memory
        return t.to(torch.get_default_dtype()) if t.is_floating_point() else t
    if isinstance(data, Mapping):
        return {k: convert(v, k) for k, v in data.items()}
    return {name: convert(data, None)}


def tensors(data: Data) -> List[torch.Tensor]:
    return list(data.values())


def num_rows(data: Data) -> int:
    return int(tensors(data)[0].shape[0])


def rows(data: Data, index) -> Data:
    """The same rows of every tensor (an index tensor, a slice or an int range)."""
    return {k: v[index] for k, v in data.items()}


def apply(data: Data, fn: Callable[[torch.Tensor], torch.Tensor]) -> Data:
    return {k: fn(v) for k, v in data.items()}


def to(data: Data, device=None, dtype: Optional[torch.dtype] = None) -> Data:
    """Moved to ``device``; floating tensors cast to ``dtype`` (integer labels stay integers)."""
    def move(t):
        t = torch.as_tensor(t)
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)
    return apply(data, move)


def repeat_rows(data: Data, k: int) -> Data:
    """Rows repeated k times (row j*b + i is point i)."""
    return apply(data, lambda t: t.repeat(k, *([1] * (t.dim() - 1))))


def observed(data: Data, name: str) -> torch.Tensor:
    """The tensor of the observations, the array ``name`` (``infer/sites.py``'s ``observed_name`` finds it)."""
    if name not in data:
        raise PyroVAEError(f"the data has no array named {name!r} (it has {', '.join(data)}): "
                           f"name the observations {name!r}, as the model's obs_site does")
    return data[name]


def replace(data: Data, name: str, value: torch.Tensor) -> Data:
    """The data with the array ``name`` replaced by ``value``."""
    return {**data, name: value}


def missing_mask(t: torch.Tensor) -> Optional[torch.Tensor]:
    """Rows where an array is missing: every entry -1 (integers) or NaN (floats: one-hot labels); None if none."""
    if t.dtype == torch.bool:
        return None
    m = torch.isnan(t) if t.is_floating_point() else (t == MISSING)
    if m.dim() > 1:
        m = m.flatten(1).all(1)
    return m if bool(m.any()) else None


def groups(data: Data) -> List[Dict[str, object]]:
    """Row groups with one pattern of missing names: [{"rows": LongTensor, "absent": (names,)}, ...].

    One group holding every row when nothing is missing, or when there is one array: the observations, which are
    never missing (their NaN is the finiteness check's; the array may be a memory map, not read here).
    """
    n = num_rows(data)
    if len(data) == 1:
        return [{"rows": torch.arange(n), "absent": ()}]
    masks = {k: m for k, v in data.items() if (m := missing_mask(v)) is not None}
    if not masks:
        return [{"rows": torch.arange(n), "absent": ()}]
    names = sorted(masks)
    code = torch.zeros(n, dtype=torch.long)
    for i, k in enumerate(names):
        code += masks[k].long().cpu() << i
    out = []
    for c in torch.unique(code).tolist():
        absent = tuple(k for i, k in enumerate(names) if (c >> i) & 1)
        out.append({"rows": torch.nonzero(code == c).flatten(), "absent": absent})
    return out


def without(data: Data, absent: Sequence[str]) -> Data:
    if not absent:
        return data
    return {k: v for k, v in data.items() if k not in absent}


def check_rows(data: Data, what: str) -> Data:
    """Named data as a dict of tensors with one row count (a one-line error otherwise)."""
    if not isinstance(data, Mapping):
        raise PyroVAEError(f"{what} is a {type(data).__name__}, not named arrays: give a mapping of arrays")
    if not data:
        raise PyroVAEError(f"{what} is an empty mapping: give at least the observations")
    out = {}
    for k, v in data.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise PyroVAEError(f"{what}: array name {k!r} is not a Python identifier: the program receives it as a keyword")
        if not isinstance(v, torch.Tensor):
            raise PyroVAEError(f"{what}[{k!r}] must be a torch.Tensor (use torch.as_tensor)")
        if v.dim() == 0:
            raise PyroVAEError(f"{what}[{k!r}] is a scalar: give one row per data point")
        out[k] = v
    counts = {k: int(v.shape[0]) for k, v in out.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {c}" for k, c in counts.items())
        raise PyroVAEError(f"{what}: the arrays have different numbers of rows ({listed}): give one row per data point in each")
    return out


def describe(data: Data) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in data.items())


def prepare(data, what: str, device=None, dtype: Optional[torch.dtype] = None) -> Data:
    """Checked named data on ``device``, floats in ``dtype``; NaN/Inf is a one-line error.

    Integer arrays keep their dtype (labels index embeddings and one-hot
    tables).  In named data a row of -1 (integers) or of NaN (floats) marks a
    missing entry, so such rows are not checked as values.
    """
    if not isinstance(data, Mapping):
        raise PyroVAEError(f"{what} is a {type(data).__name__}, not named arrays: give a mapping of arrays")
    try:
        data = {k: torch.as_tensor(v) for k, v in data.items()}
    except (TypeError, ValueError, RuntimeError) as e:
        raise PyroVAEError(f"{what} is not numeric ({e}): give numeric arrays") from None
    data = check_rows(data, what)
    data = to(data, device, dtype)
    single = len(data) == 1  # one array: the data as the user handed it, named as they know it
    for name, t in data.items():
        label = what if single else f"{what}[{name!r}]"
        if t.shape[0] == 0:
            raise PyroVAEError(f"{label} is empty: give a non-empty (points, columns) matrix")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            m = missing_mask(t) if not single else None
            rest = t[~m] if m is not None else t
            if not bool(torch.isfinite(rest).all()):
                raise PyroVAEError(f"{label} has {describe_nonfinite(rest)}: clean the data or drop those rows "
                                   "(a row that is NaN throughout marks a missing label)")
    return data


def reference(data: Data) -> torch.Tensor:
    """A tensor whose dtype and device stand for the data's (its first floating array, else its first)."""
    ts = tensors(data)
    return next((t for t in ts if t.is_floating_point()), ts[0])
