"""ArviZ glue: building InferenceData from draws, NetCDF files, PSIS k-hat."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..rundir.files import write_atomic


def arviz():
    """Import ArviZ without its import-time FutureWarning about the 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def from_dict(posterior: dict, sample_stats: Optional[dict] = None, coords=None, dims=None, attrs=None):
    """``az.from_dict`` on ArviZ 0.x (keyword groups) and 1.x (one dict of groups)."""
    az = arviz()
    if "posterior" in inspect.signature(az.from_dict).parameters:  # ArviZ 0.x
        return az.from_dict(posterior=posterior, sample_stats=sample_stats, coords=coords, dims=dims, attrs=attrs)
    groups = {"posterior": posterior}
    if sample_stats:
        groups["sample_stats"] = sample_stats
    return az.from_dict(groups, coords=coords, dims=dims, attrs=attrs)  # pragma: no cover - ArviZ 1.x


def group(data, name: str):
    """A group (xarray Dataset-like) of InferenceData (0.x) or DataTree (1.x); None if absent."""
    try:
        return data[name]
    except (KeyError, AttributeError):
        return getattr(data, name, None)


def write_netcdf(path: Path, data) -> None:
    """Write ArviZ data to ``path`` through the run directory's atomic writer (netCDF takes a file name)."""
    write_atomic(path, lambda tmp: data.to_netcdf(str(tmp)), "netCDF file", to_path=True)


def load_netcdf(path):
    return arviz().from_netcdf(str(path))


def pareto_khat(log_w: np.ndarray) -> np.ndarray:
    """PSIS Pareto k-hat of each row of ``log_w`` (points x draws): one number per point."""
    az = arviz()
    log_w = np.asarray(log_w, dtype=np.float64)
    if hasattr(az, "psislw"):
        with warnings.catch_warnings():
            # psislw warns when k-hat > 0.7; that is a result here, reported per point
            warnings.simplefilter("ignore")
            _, k = az.psislw(log_w)
        return np.atleast_1d(np.asarray(k, dtype=np.float64))
    return np.array([_khat_pyro(row) for row in log_w])  # pragma: no cover - ArviZ without psislw


def _khat_pyro(log_w: np.ndarray) -> float:  # pragma: no cover - fallback for ArviZ 1.x
    """The same tail fit as PSIS (M = min(S/5, 3 sqrt(S)) largest weights), with Pyro's GPD fit."""
    from pyro.ops.stats import fit_generalized_pareto

    s = len(log_w)
    m = int(min(0.2 * s, 3 * math.sqrt(s)))
    w = np.sort(np.exp(log_w - log_w.max()))
    tail = torch.as_tensor(w[-m:] - w[-m - 1], dtype=torch.float64)
    k, _ = fit_generalized_pareto(tail)
    return float(k)


