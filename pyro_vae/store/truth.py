"""A synthetic source's known truth in a run folder: ``truth.npz``, its arrays as data (never pickle), read back checked.

A run trained on a synthetic source (synthetic counts, a synthetic corpus, the
synthetic Gaussian or sequence sources) knows the parameters its data were
drawn with: the true inverse dispersion and dropout per feature, the true
topics, a state space's matrices.  They are saved beside the run, so that what
the model learned can be compared with them later (``pyro-vae evaluate``, or
any NumPy session: ``np.load("truth.npz")``) without regenerating the data.
Numbers become float64/int64 arrays and words a unicode array; anything else a
source's truth holds is left out.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..errors import PyroVAEError
from .files import write_atomic

#: the truth's file in a run folder
TRUTH_FILE = "truth.npz"


def truth_arrays(truth: dict) -> Dict[str, np.ndarray]:
    """The arrays of a source's truth that are data: tensors, numbers and word lists, by name."""
    out = {}
    for name, value in truth.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            out[name] = np.asarray(value, dtype=str)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.ndarray, np.generic)):
            continue
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            out[name] = arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64)
    return out


def write_truth(run_dir: Path, truth: Optional[dict]) -> Optional[Path]:
    """``run_dir/truth.npz`` from a source's truth (atomically); None when the source has none."""
    arrays = truth_arrays(truth or {})
    if not arrays:
        return None
    path = Path(run_dir) / TRUTH_FILE
    write_atomic(path, lambda f: np.savez(f, **arrays), "the synthetic source's truth")
    return path


def read_truth(run_dir: Path) -> Optional[Dict[str, np.ndarray]]:
    """The truth a run saved, by name, or None when it has none; an unreadable file is one line."""
    path = Path(run_dir) / TRUTH_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as found:
            return {name: found[name] for name in found.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise PyroVAEError(f"{str(path)!r} is not a readable truth file ({e}): retrain the run, or remove the "
                           "file to evaluate without it") from None
