"""Count runs through the downstream commands as a user meets them: sampling a model with an input category, and
training under torchrun from sparse files (.npz and Matrix Market)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import pyro_vae as pv
from pyro_vae.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _feature_label_run(tmp_path):
    g = np.random.default_rng(0)
    b = g.integers(0, 3, 300)
    x = g.negative_binomial(2 + 3 * b[:, None], 0.3, size=(300, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, batch=b)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ntrain = "{tmp_path / "d.npz"}"\narrays = ["x", "batch"]\n'
                   '[model.nodes.z]\ndim = 2\nencoder = {hidden = [8]}\n'
                   '[model.nodes.batch]\nrole = "input"\nfamily = "categorical"\ndim = 3\n'
                   '[model.nodes.x]\nrole = "observed"\nlikelihood = "negative_binomial"\nparents = ["z", "batch"]\n'
                   'dispersion = "feature-label"\nlibrary = "observed"\nnet = {hidden = [8]}\n'
                   '[train]\nepochs = 1\nbatch_size = 100\ncapture = "off"\n')
    return pv.train(pv.load_config(str(cfg)), tmp_path / "run", iw_samples=None, plots=False).run_dir


def test_sampling_a_feature_label_run_needs_its_category_said_in_one_line(tmp_path, capsys):
    run = _feature_label_run(tmp_path)
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "-n", "5", "--draws", "--given", "batch=2", "--given", "library=500",
                 "--out", str(out)]) == 0
    s = np.load(out)
    assert s.shape == (5, 8) and (s >= 0).all() and (s == np.round(s)).all()
    capsys.readouterr()
    # without the category: the one line, not the table of trace shapes Pyro appends to an error in a trace
    assert main(["sample", str(run), "-n", "5", "--draws", "--out", str(tmp_path / "t.npy")]) == 2
    err = capsys.readouterr().err
    assert "input node 'batch'" in err and "--given batch=" in err and "Trace Shapes" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "t.npy").exists()


@pytest.mark.slow
# the Matrix Market file: a text format, read a batch of rows at a time on each process (a SciPy .npz takes the same
# path, checked by hand in the README's command list; one torchrun start keeps the slow budget)
@pytest.mark.parametrize("fmt", ["mtx"])
def test_a_count_run_trains_under_torchrun_from_a_sparse_file(tmp_path, fmt):
    g = np.random.default_rng(1)
    x = sp.csr_matrix(g.negative_binomial(2, 0.4, size=(300, 10)) * (g.random((300, 10)) < 0.5))
    path = tmp_path / f"x.{fmt}"
    sp.save_npz(path, x) if fmt == "npz" else scipy.io.mmwrite(path, x)
    (tmp_path / "genes.tsv").write_text("".join(f"ENSG{i}\tG{i}\n" for i in range(10)))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ntrain = "{path}"\nfeature_names = "{tmp_path / "genes.tsv"}"\n'
                   '[model]\nlatent_dim = 2\nlikelihood = "zinb"\nlibrary = "observed"\nencoder = {hidden = [8]}\n'
                   'decoder = {hidden = [8]}\n[train]\nepochs = 2\nbatch_size = 60\n')
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pyro_vae", "train", str(cfg), "--out", str(run), "--nproc-per-node", "2",
                        "--iw-samples", "5", "--no-plots", "--quiet"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "(2 processes)" in r.stdout, r.stderr[-2000:]
    assert main(["evaluate", str(run), "--iw-samples", "5", "--quiet", "--per-feature", str(tmp_path / "f.csv")]) == 0
    rows = (tmp_path / "f.csv").read_text().splitlines()
    assert len(rows) == 11 and rows[1].startswith("0,G0,")


def test_given_library_on_a_count_run_without_one_says_so(tmp_path, capsys):
    x = np.random.default_rng(2).poisson(3.0, size=(200, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ntrain = "{tmp_path / "x.npy"}"\n[model]\nlatent_dim = 2\nlikelihood = "poisson"\n'
                   'encoder = {hidden = [8]}\ndecoder = {hidden = [8]}\n[train]\nepochs = 1\nbatch_size = 50\ncapture = "off"\n')
    run = pv.train(pv.load_config(str(cfg)), tmp_path / "run", iw_samples=None, plots=False).run_dir
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "2", "--given", "library=500"]) == 2
    err = capsys.readouterr().err
    assert "library size" in err and "'poisson' likelihood has none" in err and 'model.library = "observed"' in err
