"""The count examples end to end (train, evaluate, diagnose, report, sample, --resume), and a count run under
torchrun, resumed on one process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.cli import main

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROOT = Path(__file__).resolve().parents[1]


# counts_digits_poisson.toml trains the README's table (its commands are there); one example keeps the slow
# budget: the ZINB one, with a latent library in the torchrun test below
@pytest.mark.parametrize("name, small", [
    ("counts_zinb", ["--set", "data.num_points=600", "--set", "data.synthetic_dim=30"]),
])
def test_count_example_runs_through_every_command(tmp_path, name, small):
    run, diag = tmp_path / "run", tmp_path / "diag"
    args = ["--iw-samples", "5", "--quiet"]
    assert main(["train", str(EXAMPLES / f"{name}.toml"), *small, "--set", "train.epochs=1", "--out", str(run),
                 *args]) == 0
    plots = sorted(p.name for p in (run / "plots").iterdir())
    assert "mean_variance.png" in plots and "zero_fraction.png" in plots and "reconstructions.png" not in plots
    assert main(["evaluate", str(run), "--iw-samples", "5", "--per-feature", str(tmp_path / "f.csv")]) == 0
    assert len((tmp_path / "f.csv").read_text().splitlines()) == 1 + (30 if name == "counts_zinb" else 64)
    assert main(["diagnose", str(run), "--out", str(diag), "--points", "4", "--reference", "none", "--quiet"]) == 0
    assert main(["report", str(run), "--out", str(diag)]) == 0
    assert main(["sample", str(run), "-n", "4", "--draws", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert (s >= 0).all() and (s == np.round(s)).all()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", *args]) == 0


def test_a_latent_library_zinb_run_under_torchrun_resumes_on_one_process(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "synthetic_counts"\nnum_points = 400\nsynthetic_dim = 20\nsynthetic_dropout = 0.2\n'
                   '[model]\nlatent_dim = 2\nlikelihood = "zinb"\nlibrary = "latent"\nencoder = {hidden = [16]}\n'
                   'decoder = {hidden = [16]}\n[train]\nepochs = 2\nbatch_size = 60\n')
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pyro_vae", "train", str(cfg), "--out", str(run), "--nproc-per-node", "2",
                        "--iw-samples", "5", "--no-plots", "--quiet"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "(2 processes)" in r.stdout, r.stderr[-2000:]
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3", "--iw-samples", "5", "--quiet"]) == 0
    assert main(["sample", str(run), "-n", "3", "--draws", "--given", "library=100", "--out",
                 str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 20)
