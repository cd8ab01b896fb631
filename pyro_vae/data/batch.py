"""Named data: one tensor, or a mapping of named tensors that share their rows; the one place a program is called on it.

A program written as ``model(x)`` gets one tensor, positionally.  A program
written as Pyro's examples write conditional and semi-supervised models,
``model(x, y=None)``, gets a mapping, by keyword: ``{"x": images, "y": labels}``
calls ``model(x=images, y=labels)``.  Row i of every tensor is data point i.

A name may be missing for some rows (unlabelled rows of a semi-supervised
set): an integer array marks them with -1 (scikit-learn's convention for
unlabelled targets), a float array (one-hot labels) with a row of NaN.  Such rows are never mixed with labelled ones in a
batch: a batch either holds the name or leaves it out, so the program sees
its default (``y=None``), exactly as Pyro's M2 example feeds its two loaders.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import PyroVAEError
from .checks import describe_nonfinite

Data = Union[torch.Tensor, Mapping[str, torch.Tensor]]

#: the value that marks a missing entry of an integer array
MISSING = -1


def is_named(data) -> bool:
    return isinstance(data, Mapping)


def call(fn: Callable, data: Data, *args, **kwargs):
    """``fn(*args, x)`` for one tensor, ``fn(*args, **data)`` for named data (``args`` first: an ELBO's model, guide)."""
    if is_named(data):
        return fn(*args, **data, **kwargs)
    return fn(*args, data, **kwargs)


def from_numpy(data, what: str = "the data"):
    """NumPy arrays (one, or a mapping of them) as tensors; anything else as it is.

    Floating arrays come in torch's default dtype (float32: NumPy's float64 is only NumPy's default, and a
    program's networks are float32), integer labels stay integers.  An array of objects or strings is a
    one-line error naming ``what``.
    """
    def convert(v, label):
        if not isinstance(v, np.ndarray):
            return v
        if v.dtype.kind not in "biuf":
            raise PyroVAEError(f"{label} is a NumPy array of {v.dtype} values, not numbers: give numeric arrays")
        v = np.ascontiguousarray(v)
        t = torch.from_numpy(v if v.flags.writeable else v.copy())  # torch warns on read-only memory
        return t.to(torch.get_default_dtype()) if t.is_floating_point() else t
    if is_named(data):
        return {k: convert(v, f"{what}[{k!r}]") for k, v in data.items()}
    return convert(data, what)


def tensors(data: Data) -> List[torch.Tensor]:
    return list(data.values()) if is_named(data) else [data]


def num_rows(data: Data) -> int:
    return int(tensors(data)[0].shape[0])


def rows(data: Data, index) -> Data:
    """The same rows of every tensor (an index tensor, a slice or an int range)."""
    if is_named(data):
        return {k: v[index] for k, v in data.items()}
    return data[index]


def apply(data: Data, fn: Callable[[torch.Tensor], torch.Tensor]) -> Data:
    if is_named(data):
        return {k: fn(v) for k, v in data.items()}
    return fn(data)


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


def observed(data: Data, name: Optional[str]) -> torch.Tensor:
    """The tensor of the observations, the array ``name`` (the whole data when it is one tensor).

    ``sites.observed_name`` finds the name for a model.
    """
    if not is_named(data):
        return data
    if name not in data:
        raise PyroVAEError(f"the data has no array named {name!r} (it has {', '.join(data)}): "
                           f"name the observations {name!r}, as the model's obs_site does")
    return data[name]


def replace(data: Data, name: Optional[str], value: torch.Tensor) -> Data:
    """The data with the array ``name`` (the tensor itself for one tensor) replaced by ``value``."""
    if not is_named(data):
        return value
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

    One group holding every row when nothing is missing.
    """
    n = num_rows(data)
    if not is_named(data):
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
    if not absent or not is_named(data):
        return data
    return {k: v for k, v in data.items() if k not in absent}


def check_rows(data: Data, what: str) -> Data:
    """Named data as a dict of tensors with one row count (a one-line error otherwise)."""
    if not is_named(data):
        return data
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
    if not is_named(data):
        return f"shape {tuple(data.shape)}"
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in data.items())


def prepare(data, what: str, device=None, dtype: Optional[torch.dtype] = None) -> Data:
    """Checked named data (or one tensor) on ``device``, floats in ``dtype``; NaN/Inf is a one-line error.

    Integer arrays keep their dtype (labels index embeddings and one-hot
    tables).  In named data a row of -1 (integers) or of NaN (floats) marks a
    missing entry, so such rows are not checked as values.
    """
    if is_named(data):
        try:
            data = {k: torch.as_tensor(v) for k, v in data.items()}
        except (TypeError, ValueError, RuntimeError) as e:
            raise PyroVAEError(f"{what} is not numeric ({e}): give a mapping of numeric arrays") from None
        data = check_rows(data, what)
    else:
        try:
            data = torch.as_tensor(data)
        except (TypeError, ValueError, RuntimeError) as e:
            raise PyroVAEError(f"{what} is not a numeric array ({e}): pass a (points, columns) matrix") from None
    data = to(data, device, dtype)
    for name, t in (data.items() if is_named(data) else [(None, data)]):
        label = what if name is None else f"{what}[{name!r}]"
        if t.shape[0] == 0:
            raise PyroVAEError(f"{label} is empty: give a non-empty (points, columns) matrix")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            m = missing_mask(t) if name is not None else None
            rest = t[~m] if m is not None else t
            if not bool(torch.isfinite(rest).all()):
                raise PyroVAEError(f"{label} has {describe_nonfinite(rest)}: clean the data or drop those rows "
                                   "(a row that is NaN throughout marks a missing label)")
    return data


def reference(data: Data) -> torch.Tensor:
    """A tensor whose dtype and device stand for the data's (its first floating array, else its first)."""
    ts = tensors(data)
    return next((t for t in ts if t.is_floating_point()), ts[0])
