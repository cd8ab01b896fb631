"""Whether runs were diagnosed on the same data points: the arrays they share compared, and what differs said.

Runs on the same rows need not be given the same arrays: a one-latent VAE gets
the images alone, a conditional graph the images and their labels ``{x, y}``.
Their points are the same when every array both runs read is the same; an
array only one of them reads says nothing about the other.  The observations
are shared by every run, whatever each names them (one tensor has no name).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..data import batch
from ..infer.data_name import named_data
from ..infer.sites import observed_name
from .settings import Subject

#: the key the observations go under, whatever a run names them
OBSERVATIONS = "the observations"


def arrays_by_role(subject: Subject) -> Dict[str, torch.Tensor]:
    """The subject's points as named CPU arrays, its observations under :data:`OBSERVATIONS`."""
    what = f"the points of run {subject.name!r}"
    x = batch.prepare(named_data(subject.model, subject.x, what), what)
    obs = observed_name(subject.model, x)
    return {(OBSERVATIONS if name == obs else name): t.cpu() for name, t in x.items()}


def _array_difference(name: str, a: torch.Tensor, b: torch.Tensor) -> Optional[str]:
    """How array ``name`` of one run differs from another's (``a`` the first run's, as many rows), or None."""
    if a.shape[1:] != b.shape[1:]:
        return f"{name} has shape {tuple(b.shape)} against {tuple(a.shape)}"
    same = a.eq(b) | (a.isnan() & b.isnan()) if a.is_floating_point() and b.is_floating_point() else a.eq(b)
    rows = (~same.reshape(same.shape[0], -1).all(1)).nonzero().flatten().tolist()
    if not rows:
        return None
    verb = "differ" if name == OBSERVATIONS else "differs"
    return f"{name} {verb} in {len(rows)} of {a.shape[0]} points (first: point {rows[0]})"


def _difference(first: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor]) -> List[str]:
    """What differs between two runs' points, array by array over the arrays both read."""
    n, m = (batch.num_rows(arrays) for arrays in (first, other))
    if n != m:
        return [f"{m} points against {n}"]
    found = (_array_difference(name, first[name], other[name]) for name in first if name in other)
    return [d for d in found if d is not None]


def data_difference(subjects: Sequence[Subject]) -> Optional[str]:
    """What differs between the points of the first run and each other's, in the arrays they share; None when
    every run was diagnosed on the same points."""
    arrays = [arrays_by_role(s) for s in subjects]
    found = []
    for s, other in zip(subjects[1:], arrays[1:]):
        diffs = _difference(arrays[0], other)
        if diffs:
            found.append(f"run {s.name!r} against {subjects[0].name!r}: {', '.join(diffs)}")
    return "; ".join(found) or None
