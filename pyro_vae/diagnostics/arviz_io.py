"""ArviZ glue: building InferenceData from draws, and its NetCDF files."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

from ..infer.psis import arviz
from ..rundir.files import write_atomic



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




