"""Diagnosis results: typed records, their JSON form, and saving/loading a diagnosis folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import PyroVAEError
from .settings import DiagnoseSettings, FORMAT
from .arviz_io import _to_netcdf, load_netcdf
from ..serialize import to_plain

@dataclass
class RunDiagnosis:
    """The diagnostics of one run (numbers in :attr:`numbers`, draws as ArviZ data)."""

    name: str
    numbers: dict  # JSON-ready: info, per-point arrays, summary, warnings
    q: object = None  # ArviZ data: draws from q(z|x)
    reference: object = None  # ArviZ data: the reference posterior's draws
    nuts: object = None  # ArviZ data: NUTS draws when the reference is the grid
    grid: Optional[dict] = None  # exact 2-D grid posterior: log-probabilities and boxes


@dataclass
class Diagnosis:
    settings: DiagnoseSettings
    runs: List[RunDiagnosis]
    warnings: List[str]
    created: str = ""

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "created": self.created,
            "settings": dataclasses.asdict(self.settings),
            "runs": [r.numbers for r in self.runs],
            "warnings": list(self.warnings),
        }

    def save(self, out_dir) -> Path:
        """Write ``diagnostics.json`` and, per run, ``<name>/q.nc``, ``reference.nc`` (netCDF) and ``grid.npz``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for r in self.runs:
            folder = out / r.numbers["folder"]
            folder.mkdir(parents=True, exist_ok=True)
            for label, data in (("q", r.q), ("reference", r.reference), ("nuts", r.nuts)):
                path = folder / f"{label}.nc"
                if data is not None:
                    _to_netcdf(data, path)
                elif path.exists():
                    path.unlink()  # stale file from an earlier diagnosis in this folder
            if r.grid is not None:
                np.savez_compressed(folder / "grid.npz", **r.grid)
            elif (folder / "grid.npz").exists():
                (folder / "grid.npz").unlink()
        from ..rundir.files import write_text_atomic

        path = out / "diagnostics.json"
        write_text_atomic(path, json.dumps(to_plain(self.to_json()), indent=1) + "\n")
        return path


# ---------------------------------------------------------------------------
# ArviZ, across its 0.x and 1.x APIs


def load_diagnosis(folder) -> Diagnosis:
    """Read back what :meth:`Diagnosis.save` wrote."""
    folder = Path(folder)
    path = folder / "diagnostics.json"
    if not path.exists():
        raise PyroVAEError(f"no diagnostics.json in {str(folder)!r}: run 'pyro-vae diagnose ... --out {folder}' first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PyroVAEError(f"{path} is not valid JSON ({e}): run 'pyro-vae diagnose' again") from None
    if raw.get("format") != FORMAT:
        raise PyroVAEError(f"{path} has format {raw.get('format')!r}, expected {FORMAT!r}: run 'pyro-vae diagnose' again")
    known = {f.name for f in dataclasses.fields(DiagnoseSettings)}
    settings = DiagnoseSettings(**{k: v for k, v in raw["settings"].items() if k in known})
    runs = []
    for n in raw["runs"]:
        sub = folder / n["folder"]
        get = lambda label: load_netcdf(sub / f"{label}.nc") if (sub / f"{label}.nc").exists() else None
        grid = dict(np.load(sub / "grid.npz")) if (sub / "grid.npz").exists() else None
        runs.append(RunDiagnosis(n["name"], n, get("q"), get("reference"), get("nuts"), grid))
    return Diagnosis(settings, runs, raw.get("warnings", []), raw.get("created", ""))


