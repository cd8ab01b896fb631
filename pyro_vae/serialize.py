"""The one to-plain serialiser: dataclasses, tuples, numpy and tensors to JSON/TOML-ready values."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch


def to_plain(obj):
    """Plain values: dataclasses -> dicts, tuples and arrays -> lists, non-finite floats -> None (JSON has none)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, torch.Tensor):
        return to_plain(obj.detach().cpu().numpy())
    return obj

