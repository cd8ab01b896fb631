"""The CLI as a user runs it: --help everywhere, the demo, train/evaluate/sample, errors in one line."""

import json
import math
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import main

COMMANDS = ["demo", "train", "evaluate", "sample"]


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_everywhere(command, capsys):
    assert main(([command] if command else []) + ["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: pyro-vae" in out
    if command:
        assert command in out


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's main job: trains on the embedded digits, prints metrics, writes plots."""
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "test ELBO" in r.stdout and "log p(x)" in r.stdout
    assert "Traceback" not in r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # a trained 8x8-digits VAE: the ELBO must be well above that of an untrained one (~ -44 nats)
    assert metrics["elbo"] > -30
    assert metrics["log_likelihood"] >= metrics["elbo"] - 3 * metrics["log_likelihood_se"]
    for name in ("loss.png", "reconstructions.png", "samples.png", "latent.png"):
        assert (out / "plots" / name).exists()
    assert str(out / "plots") in r.stdout


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    code = main(["train", "--quiet", "--out", str(out), "--iw-samples", "50",
                 "--set", "train.epochs=2", "--set", "model.latent_dim=2",
                 "--set", "model.encoder.hidden=[32]", "--set", "model.decoder.hidden=[32]"])
    assert code == 0
    return out


def test_evaluate_json_keys(small_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(small_run), "--iw-samples", "20", "--json"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out)  # exactly one JSON object
    for key in ("elbo", "reconstruction", "kl", "log_likelihood", "log_likelihood_se", "num_points"):
        assert key in metrics
    saved = json.loads((small_run / "metrics.json").read_text())
    assert set(metrics) <= set(saved) | {"seconds_train"}


def test_evaluate_elbo_agrees_with_pyros_own_estimator(small_run, capsys):
    # an independent estimate of the same number: Pyro's Trace_ELBO (Monte Carlo KL) on the same test points
    capsys.readouterr()
    assert main(["evaluate", str(small_run), "--iw-samples", "200", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    run = pv.load_run(small_run)
    x = pv.load_run_data(run).test
    pyro.set_rng_seed(1)
    elbo = pyro.infer.Trace_ELBO()
    with torch.no_grad():
        draws = torch.tensor([-elbo.loss(run.model.model, run.model.guide, x) / len(x) for _ in range(200)])
    se = math.sqrt(metrics["elbo_se"] ** 2 + float(draws.var()) / len(draws))
    assert abs(metrics["elbo"] - float(draws.mean())) < 4 * se, (metrics["elbo"], float(draws.mean()), se)


def test_evaluate_on_other_data(small_run, tmp_path, capsys):
    x = (np.random.default_rng(0).random((30, 64)) > 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["evaluate", str(small_run), "--data", str(tmp_path / "x.npy"), "--iw-samples", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_points"] == 30


def test_evaluate_rejects_wrong_width(small_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((5, 10), np.float32))
    assert main(["evaluate", str(small_run), "--data", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "(5, 10)" in err and "64" in err and len(err.strip().splitlines()) == 1


def test_sample_png_and_npy(small_run, tmp_path):
    assert main(["sample", str(small_run), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["sample", str(small_run), "-n", "7", "--out", str(tmp_path / "s.npy")]) == 0
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (7, 64) and (arr >= 0).all() and (arr <= 1).all()


def test_sample_png_for_non_image_data_is_an_error(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["train", "--quiet", "--no-plots", "--out", str(out), "--iw-samples", "5", "--set", "data.source=synthetic",
                 "--set", "data.num_points=200", "--set", "model.likelihood=normal", "--set", "train.epochs=1",
                 "--set", "model.latent_dim=2"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--out", str(tmp_path / "s.png")]) == 2
    assert "not images" in capsys.readouterr().err


def test_resume_continues_a_run(small_run, capsys):
    assert main(["train", "--quiet", "--resume", str(small_run), "--iw-samples", "5", "--set", "train.epochs=3"]) == 0
    lines = (small_run / "history.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 3


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--set", "model.latent_dims=3"], "did you mean 'latent_dim'"),
        (["train", "--set", "model.likelihood=gaussian"], "valid: "),
        (["train", "--set", "train.lr=0"], "train.lr: must be > 0"),
        (["train", "--set", "model.binarize=none"], "unknown key 'model.binarize'"),
        (["train", "--set", "model.likelihood=bernoulli", "--set", "data.binarize=none"], "continuous_bernoulli"),
        (["train", "--set", "data.source=fashion-mnist", "--set", "data.path=/nonexistent"], "data.path"),
        (["train", "--set", "data.train=/nonexistent.npy"], "does not exist"),
        (["train", "--resume", "/nonexistent-run"], "no run there"),
        (["evaluate", "/nonexistent-run"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_train_refuses_a_non_empty_out_dir(small_run, capsys):
    assert main(["train", "--out", str(small_run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("pyro-vae")
    assert exe is not None, "pip install . should install the pyro-vae console script"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pyro-vae {pv.__version__}"


def test_a_usage_error_is_one_line_without_the_usage_block(capsys):
    assert main(["train", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: unrecognized arguments: --no-such-flag"), err


@pytest.mark.parametrize("args, fragment", [
    (["evaluate", "RUN", "--seed", str(10**23)], "a seed must be in [0, 2**63)"),
    (["sample", "RUN", "--seed", "-5", "-n", "2"], "a seed must be in [0, 2**63)"),
    (["evaluate", "RUN", "--iw-samples", str(10**14)], "more than 10,000,000 draws a point"),
    (["evaluate", "RUN", "--prior-samples", str(10**9)], "more than 10,000,000 draws a point"),
    (["diagnose", "RUN", "--draws", str(10**11), "--out", "OUT"], "--draws must be at most 1,000,000"),
    (["diagnose", "RUN", "--nuts-chains", "1000", "--out", "OUT"], "--nuts-chains must be at most 64"),
    (["sample", "RUN", "-n", str(10**11)], "needs ~"),
])
def test_counts_and_seeds_out_of_range_are_one_line_before_any_work(small_run, tmp_path, capsys, args, fragment):
    args = [str(small_run) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    before = sorted(p.name for p in small_run.iterdir())
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ") and fragment in err[0], err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in small_run.iterdir()) == before
