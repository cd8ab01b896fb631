"""Latent site names that file formats treat specially (`/`, `<`, quotes, spaces, unicode) go through diagnose and
report: stored in ArviZ data and netCDF with `/` percent-escaped (a path to both), read back, escaped on the page."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import pyro_vae as pv
from pyro_vae.arviz_compat import group
from pyro_vae.cli import main
from pyro_vae.diagnostics.arviz_io import from_dict, load_netcdf, site_name, stored_name, write_netcdf

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


@pytest.mark.parametrize("name", [SITE, "a%2Fb/c", "%", "z", "50% / 50%"])
def test_a_stored_name_reads_back_as_the_site_and_holds_no_slash(name):
    stored = stored_name(name)
    assert "/" not in stored and site_name(stored) == name


def test_netcdf_keeps_a_site_with_a_slash_under_its_stored_name(tmp_path):
    draws = np.random.default_rng(0).normal(size=(1, 10, 2, 3))
    var = stored_name(SITE)
    dim = f"{var}_dim"
    data = from_dict({var: draws, "z": draws[..., :1]}, None, coords={"point": np.arange(2), dim: np.arange(3)},
                     dims={var: ["point", dim]}, attrs={"run": "r"})
    write_netcdf(tmp_path / "q.nc", data)
    back = load_netcdf(tmp_path / "q.nc")
    posterior = group(back, "posterior")
    assert sorted(posterior.data_vars) == sorted([var, "z"]) and dim in posterior.dims
    assert np.array_equal(posterior[var].values, draws) and posterior.attrs["run"] == "r"


def test_a_site_named_with_a_slash_and_markup_goes_through_diagnose_and_report(tmp_path, capsys):
    (tmp_path / "odd_site_names.py").write_text(SOURCE)
    (tmp_path / "cfg.toml").write_text(TOML)
    run, out = tmp_path / "run", tmp_path / "report"
    assert main(["train", str(tmp_path / "cfg.toml"), "--out", str(run), "--quiet", "--iw-samples", "10"]) == 0
    assert main(["diagnose", str(run), "--out", str(out), *REPORT]) == 0
    assert sorted(group(load_netcdf(out / "run" / "q.nc"), "posterior").data_vars) == [stored_name(SITE)]
    # report reads the saved diagnosis (and its netCDF files) back instead of diagnosing again
    saved = (out / "diagnostics.json").stat().st_mtime_ns
    assert main(["report", str(run), "--out", str(out), *REPORT]) == 0
    assert (out / "diagnostics.json").stat().st_mtime_ns == saved
    page = (out / "index.html").read_text()
    assert "enc/z &lt;b&gt;" in page and "<b>" not in page
    assert json.loads((out / "diagnostics.json").read_text())["runs"][0]["latent_sites"] == [SITE]
    diagnosis = pv.load_diagnosis(out)
    assert sorted(group(diagnosis.runs[0].q_data, "posterior").data_vars) == [stored_name(SITE)]
