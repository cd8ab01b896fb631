"""Latent site names that file formats treat specially (`/`, `<`, quotes, spaces, unicode) go through diagnose and
report: stored in netCDF under recorded stand-ins, read back under their own names, escaped on the page."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.diagnostics.arviz_io import NAMES_ATTR, from_dict, load_netcdf, write_netcdf

SITE = "enc/z <b> 'q' ü"

SOURCE = textwrap.dedent(f'''
    import torch.nn as nn
    import pyro
    import pyro.distributions as dist

    SITE = {SITE!r}


    class OddNames:
        latent_sites = (SITE,)
        obs_site = "x"

        def __init__(self, data_dim, hidden=8):
            self.data_dim = data_dim
            self.decoder = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
            self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 4))

        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample(SITE, dist.Normal(0.0, 1.0).expand([2]).to_event(1))
                pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.encoder(x).split(2, -1)
                pyro.sample(SITE, dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
''')

TOML = textwrap.dedent('''
    [data]
    source = "synthetic"
    num_points = 120
    synthetic_dim = 4
    [model]
    program = "odd_site_names:OddNames"
    [train]
    elbo = "trace"
    epochs = 2
    batch_size = 40
    device = "cpu"
''')

REPORT = ["--points", "2", "--reference", "nuts", "--nuts-warmup", "30", "--nuts-samples", "30", "--nuts-chains", "2",
          "--draws", "50", "--local-steps", "5", "--sbc-sims", "4", "--quiet"]


def test_netcdf_keeps_names_it_cannot_store_under_recorded_stand_ins(tmp_path):
    draws = np.random.default_rng(0).normal(size=(1, 10, 2, 3))
    dim = f"{SITE}_dim"
    data = from_dict({SITE: draws, "z": draws[..., :1]}, None, coords={"point": np.arange(2), dim: np.arange(3)},
                     dims={SITE: ["point", dim]}, attrs={"run": "r"})
    write_netcdf(tmp_path / "q.nc", data)
    back = load_netcdf(tmp_path / "q.nc")
    assert sorted(back.posterior.data_vars) == sorted([SITE, "z"]) and dim in back.posterior.dims
    assert np.array_equal(back.posterior[SITE].values, draws) and NAMES_ATTR not in back.posterior.attrs
    assert "arviz_version" in back.posterior.attrs  # the group's other attributes stay


def test_a_site_named_with_a_slash_and_markup_goes_through_diagnose_and_report(tmp_path, capsys):
    (tmp_path / "odd_site_names.py").write_text(SOURCE)
    (tmp_path / "cfg.toml").write_text(TOML)
    run, out = tmp_path / "run", tmp_path / "report"
    assert main(["train", str(tmp_path / "cfg.toml"), "--out", str(run), "--quiet", "--iw-samples", "10"]) == 0
    assert main(["diagnose", str(run), "--out", str(out), *REPORT]) == 0
    assert sorted(load_netcdf(out / "run" / "q.nc").posterior.data_vars) == [SITE]
    # report reads the saved diagnosis (and its netCDF files) back instead of diagnosing again
    saved = (out / "diagnostics.json").stat().st_mtime_ns
    assert main(["report", str(run), "--out", str(out), *REPORT]) == 0
    assert (out / "diagnostics.json").stat().st_mtime_ns == saved
    page = (out / "index.html").read_text()
    assert "enc/z &lt;b&gt;" in page and "<b>" not in page
    assert json.loads((out / "diagnostics.json").read_text())["runs"][0]["latent_sites"] == [SITE]
    diagnosis = pv.load_diagnosis(out)
    assert sorted(diagnosis.runs[0].q_data.posterior.data_vars) == [SITE]
