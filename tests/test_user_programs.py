"""Pyro programs as Pyro users write them: plates without a size, batch norm, count likelihoods, bad input found late,
NumPy data and (model, guide) function pairs, through the CLI and the Python API."""

import inspect
import importlib
import json
import pkgutil
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyro_vae as pv
from pyro_vae.cli import main

# Pyro's examples/ss_vae_M2.py, shrunk: `with pyro.plate("data"):` has no size (the tensors decide it), the priors are
# built as torch.zeros(batch_size, ...) (no leading draw dim), and model(xs, ys=None) scores the label when given
M2_PROGRAM = '''
import pyro, pyro.distributions as dist, torch, torch.nn as nn


def _cat(a, b):
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)


class SSVAE(nn.Module):
    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, data_dim=64, z_dim=2, hidden=16):
        super().__init__()
        self.z_dim = z_dim
        self.encoder_y = nn.Sequential(nn.Linear(data_dim, hidden), nn.Softplus(), nn.Linear(hidden, 10))
        self.encoder_z = nn.Sequential(nn.Linear(data_dim + 10, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim + 10, hidden), nn.Softplus(), nn.Linear(hidden, data_dim))

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, 10, **options) / 10.0
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(_cat(zs, ys))).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, raw = self.encoder_z(_cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, torch.exp(raw)).to_event(1))
'''

M2_TOML = '''[data]
train = "train.npz"
test = "{test}"
arrays = ["xs", "ys"]
[model]
program = "{module}:SSVAE"
[train]
elbo = "enum"
epochs = 1
batch_size = 50
'''

# a diagnosis as small as it gets: 3 points, the exact grid posterior of the 2-D latent
DIAGNOSE_FAST = ["--points", "3", "--reference", "grid", "--draws", "100", "--sbc-sims", "0", "--quiet"]


def _module_name(stem: str, folder) -> str:
    """A module name of the test's own: one process imports each program module from one folder only."""
    return stem + "_" + re.sub(r"\W", "_", folder.name)


def _digits(n):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x[:n] / 16.0 > 0.5).astype(np.float32), y[:n]


@pytest.fixture
def m2_folder(tmp_path):
    """The M2 program, 200 training rows with every other label missing (NaN rows), and two test files: every
    label given, and a third of them missing."""
    x, y = _digits(260)
    ys = np.eye(10, dtype=np.float32)[y]
    train_ys = ys[:200].copy()
    train_ys[::2] = np.nan
    np.savez(tmp_path / "train.npz", xs=x[:200], ys=train_ys)
    np.savez(tmp_path / "test.npz", xs=x[200:], ys=ys[200:])
    partial = ys[200:].copy()
    partial[::3] = np.nan
    np.savez(tmp_path / "test_partial.npz", xs=x[200:], ys=partial)
    module = _module_name("m2", tmp_path)
    (tmp_path / f"{module}.py").write_text(M2_PROGRAM)
    (tmp_path / "m2.toml").write_text(M2_TOML.format(test="test.npz", module=module))
    (tmp_path / "m2_partial.toml").write_text(M2_TOML.format(test="test_partial.npz", module=module))
    return tmp_path


# -- plates without a size: diagnose and report ------------------------------------------------------


def test_m2_with_a_sizeless_data_plate_trains_diagnoses_and_reports(m2_folder, capsys):
    run, out = m2_folder / "run", m2_folder / "diag"
    assert main(["train", str(m2_folder / "m2.toml"), "--out", str(run), "--quiet", "--iw-samples", "5"]) == 0
    # the per-point q (an AutoNormal) re-opens pyro.plate("data") with the points' number, with and without steps
    assert main(["diagnose", str(run), "--out", str(out), "--local-steps", "0"] + DIAGNOSE_FAST) == 0
    assert main(["diagnose", str(run), "--out", str(m2_folder / "diag2"), "--local-steps", "20"] + DIAGNOSE_FAST) == 0
    assert main(["report", str(run), "--out", str(out), "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    for folder, steps in ((out, 0), (m2_folder / "diag2", 20)):
        (saved,) = json.loads((folder / "diagnostics.json").read_text())["runs"]
        assert len(saved["points"]) == 3 and saved["latent_sites"] == ["z"]
        # the per-point fit took its steps (a quarter more per averaged block after them) and has a gap per point
        assert saved["local"]["steps"] >= steps and (saved["local"]["steps"] == 0) == (steps == 0)
        assert len(saved["local"]["gap"]) == 3 and np.isfinite(saved["local"]["gap"]).all()
    assert (out / "index.html").is_file() and (out / "report.md").is_file()


# -- bad input found late: nothing left behind --------------------------------------------------------


def test_an_m2_test_file_without_every_label_writes_nothing_and_the_fixed_retry_trains(m2_folder, capsys):
    run = m2_folder / "run"
    assert main(["train", str(m2_folder / "m2_partial.toml"), "--out", str(run), "--quiet", "--iw-samples", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test data has arrays that are missing" in err[0] and "Traceback" not in err[0]
    assert not run.exists()
    # the same folder, the input fixed: no "already holds a run"
    assert main(["train", str(m2_folder / "m2.toml"), "--out", str(run), "--quiet", "--iw-samples", "5"]) == 0
    assert (run / "checkpoint.pt").is_file()


def test_an_error_after_the_folder_is_made_and_before_a_checkpoint_removes_what_it_wrote(m2_folder, monkeypatch,
                                                                                          capsys):
    from pyro_vae.app import pipeline

    def fails(self, *args, **kwargs):
        raise pv.PyroVAEError("found late: fix it")

    run = m2_folder / "run"
    monkeypatch.setattr(pipeline.Trainer, "fit", fails)
    assert main(["train", str(m2_folder / "m2.toml"), "--out", str(run), "--quiet"]) == 2
    assert "found late" in capsys.readouterr().err and not run.exists()
    # a folder that was there before is kept (emptied of what this command wrote), as is what else it holds
    for held in ((), ("notes.txt",)):
        there = m2_folder / f"there{len(held)}"
        there.mkdir()
        for name in held:
            (there / name).write_text("mine")
        code = main(["train", str(m2_folder / "m2.toml"), "--out", str(there), "--quiet"])
        assert code == 2 and sorted(p.name for p in there.iterdir()) == list(held)
    monkeypatch.undo()
    assert main(["train", str(m2_folder / "m2.toml"), "--out", str(m2_folder / "there0"), "--quiet",
                 "--iw-samples", "5"]) == 0
