"""The one to-plain serialiser: dataclasses, tuples, numpy and tensors to JSON/TOML-ready values, and TOML text."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

import numpy as np
import torch

from .errors import PyroVAEError


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


def dump_toml(values: Mapping[str, Any]) -> str:
    """Write a config dict as TOML (sections, scalars, lists and inline tables)."""

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            if any("\ud800" <= ch <= "\udfff" for ch in v):
                raise PyroVAEError(f"{v!r} is not valid UTF-8 (a file name with undecodable bytes?): rename it")
            # JSON's escapes are TOML's basic-string escapes; TOML also forbids a raw DEL
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items() if x is not None) + " }"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = []
    for section, body in values.items():
        lines.append(f"[{section}]")
        for k, v in body.items():
            if v is not None:
                lines.append(f"{k} = {scalar(v)}")
        lines.append("")
    return "\n".join(lines)
