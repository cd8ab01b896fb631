"""ArviZ glue: building InferenceData from draws, and its NetCDF files."""

from __future__ import annotations

import json
import re
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


#: netCDF variable and dimension names that every backend writes as they are; any other name (a site called
#: "enc/z", or one with spaces, quotes or unicode) is stored under a stand-in, recorded in the group's attributes
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NAMES_ATTR = "pyro_vae_names"


def _map_groups(data, fn):
    """``fn`` applied to every group's dataset: InferenceData (ArviZ 0.x) or DataTree (1.x)."""
    if hasattr(data, "map_over_datasets"):  # pragma: no cover - ArviZ 1.x
        return data.map_over_datasets(fn)
    return type(data)(**{g: fn(getattr(data, g)) for g in data.groups()})


def _stored_names(ds):
    names = [str(n) for n in (*ds.data_vars, *ds.dims, *ds.coords)]
    taken = set(names)
    mapping = {}
    for name in dict.fromkeys(names):
        if not _PLAIN_NAME.match(name):
            stand_in = f"pv_name_{len(mapping)}"
            while stand_in in taken:
                stand_in += "_"
            taken.add(stand_in)
            mapping[name] = stand_in
    if not mapping:
        return ds
    attrs = dict(ds.attrs) | {NAMES_ATTR: json.dumps({v: k for k, v in mapping.items()})}
    return ds.rename(mapping).assign_attrs(attrs)


def _original_names(ds):
    if NAMES_ATTR not in ds.attrs:
        return ds
    try:
        mapping = json.loads(ds.attrs[NAMES_ATTR])
    except ValueError:
        return ds
    present = {k: v for k, v in mapping.items() if isinstance(v, str) and k in {*ds.data_vars, *ds.dims, *ds.coords}}
    out = ds.rename(present)
    out.attrs = {k: v for k, v in ds.attrs.items() if k != NAMES_ATTR}
    return out


def write_netcdf(path: Path, data) -> None:
    """Write ArviZ data to ``path`` through the run directory's atomic writer (netCDF takes a file name), names
    that netCDF cannot hold stored under stand-ins that :func:`load_netcdf` maps back."""
    stored = _map_groups(data, _stored_names)
    write_atomic(path, lambda tmp: arviz_compat.to_netcdf(stored, tmp), "netCDF file", to_path=True)


def load_netcdf(path):
    return _map_groups(arviz_compat.from_netcdf(path), _original_names)




