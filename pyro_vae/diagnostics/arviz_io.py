"""ArviZ glue: building InferenceData from draws, and its NetCDF files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import arviz_compat
from ..store.files import write_atomic



def from_dict(posterior: dict, sample_stats: Optional[dict] = None, coords=None, dims=None, attrs=None):
    """ArviZ data (0.x InferenceData, 1.x DataTree) from (chain, draw, ...) arrays."""
    return arviz_compat.from_dict(posterior, sample_stats, coords=coords, dims=dims, attrs=attrs)


def group(data, name: str):
    """A group of ArviZ data as an xarray Dataset; None if absent."""
    return arviz_compat.group(data, name)


def stored_name(name: str) -> str:
    """The name a latent site (or its dimension) has in ArviZ data and its netCDF files: ``/`` percent-escaped.

    A ``/`` is a path separator to both ArviZ 1.x's DataTree and netCDF-4, so a site called "enc/z" is stored as
    "enc%2Fz" ("%" as "%25", so the escape reads back unambiguously); every other character is kept, so the name
    stays readable in ArviZ's own tools.
    """
    return name.replace("%", "%25").replace("/", "%2F")


def site_name(stored: str) -> str:
    """The latent site a stored name stands for (the inverse of :func:`stored_name`)."""
    return stored.replace("%2F", "/").replace("%25", "%")


def write_netcdf(path: Path, data) -> None:
    """Write ArviZ data to ``path`` through the run directory's atomic writer (netCDF takes a file name)."""
    write_atomic(path, lambda tmp: arviz_compat.to_netcdf(data, tmp), "netCDF file", to_path=True)


def load_netcdf(path):
    return arviz_compat.from_netcdf(path)




