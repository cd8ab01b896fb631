"""A model of your own as a first-class run: trained from TOML by import path, evaluated, sampled, diagnosed,
reported and resumed from its run directory; pv.fit's run_dir checked before training and loaded back."""

import hashlib
import importlib
import json
import math
import shutil
import sys
import textwrap
import tomllib

import numpy as np
import pytest
import torch
import pyro

import pyro_vae as pv
from pyro_vae.cli import main

MODULE = "tiny_user_models"  # one name for this file's models: Python keeps one module per name

SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import pyro
    import pyro.distributions as dist
    from pyro.distributions import constraints


    class TinyVAE:
        """A hand-written Pyro VAE: networks registered with pyro.module, a global noise scale with pyro.param."""

        latent_sites = ("z",)
        obs_site = "x"

        def __init__(self, data_dim, latent_dim=2, hidden=8):
            self.data_dim, self.latent_dim = data_dim, latent_dim
            self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
            self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))

        def model(self, x):
            pyro.module("decoder", self.decoder)
            sigma = pyro.param("sigma", torch.ones(self.data_dim), constraint=constraints.positive)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
                pyro.sample("x", dist.Normal(self.decoder(z), sigma).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.encoder(x).split(self.latent_dim, -1)
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


    class Broken(TinyVAE):
        def __init__(self, data_dim, hidden=8):
            raise RuntimeError("needs a GPU")


    class NotAModel:
        def __init__(self, hidden=3):
            self.hidden = hidden
''')

TOML = textwrap.dedent('''
    [data]
    source = "synthetic"
    num_points = 200
    synthetic_dim = 6

    [model]
    program = "{program}"

    [model.args]
    hidden = 8

    [train]
    elbo = "trace"
    epochs = {epochs}
    batch_size = 45
    lr = 0.01
    device = "cpu"
''')

FAST = ["--quiet", "--iw-samples", "10"]
DIAGNOSE = ["--points", "3", "--reference", "none", "--draws", "50", "--local-steps", "0", "--sbc-sims", "0", "--quiet"]


def _config(folder, program=f"{MODULE}:TinyVAE", epochs=2, extra=""):
    path = folder / f"cfg-{abs(hash((program, epochs, extra)))}.toml"
    path.write_text(TOML.format(program=program, epochs=epochs) + extra)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    (folder / f"{MODULE}.py").write_text(SOURCE)
    return folder


@pytest.fixture(scope="module")
def run(project):
    out = project / "run"
    assert main(["train", str(_config(project)), "--out", str(out), *FAST]) == 0
    return out


def _history(run_dir):
    return pv.load_run(run_dir).history


def test_train_writes_a_full_run_directory_that_records_the_program(run, project):
    for name in ("config.toml", "checkpoint.pt", "history.csv", "metrics.json", "plots/loss.png"):
        assert (run / name).is_file(), name
    model = tomllib.loads((run / "config.toml").read_text())["model"]
    source = project.resolve() / f"{MODULE}.py"
    assert model == {"program": f"{MODULE}:TinyVAE", "args": {"hidden": 8}, "program_dir": str(project.resolve()),
                     "program_file": str(source), "program_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    loaded = pv.load_run(run)
    assert type(loaded.model).__name__ == "TinyVAE" and loaded.model.data_dim == 6 and loaded.data_dim == 6
    assert len(loaded.history) == 2


def test_evaluate_restores_module_weights_and_param_store_globals(run, capsys):
    # the same seed and K as the run's own final evaluation: equal numbers only if every parameter came back
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--iw-samples", "10", "--seed", "0"]) == 0
    got = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("elbo", "log_likelihood", "reconstruction", "kl"):
        assert math.isclose(got[key], saved[key], rel_tol=1e-5, abs_tol=1e-5), key
    # the trained noise scale is what the loaded model runs with (not its initial value, 1)
    assert not torch.allclose(pyro.param("sigma"), torch.ones(6))


def test_sample_draws_from_the_prior_predictive(run, tmp_path):
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "-n", "2000", "--out", str(out), "--seed", "3", "--draws"]) == 0
    x = np.load(out)
    assert x.shape == (2000, 6) and np.isfinite(x).all()
    # x = f(z) + sigma * eps: the sample variance of each column is at least sigma^2 (up to its s.e.);
    # sampling ran the program in the model's scope, which left the trained sigma in Pyro's global store
    sigma2 = pyro.param("sigma").detach().numpy() ** 2
    var = x.var(0, ddof=1)
    assert (var > sigma2 * (1 - 5 * math.sqrt(2 / 1999))).all()
    again = tmp_path / "again.npy"
    assert main(["sample", str(run), "-n", "2000", "--out", str(again), "--seed", "3", "--draws"]) == 0
    assert np.array_equal(np.load(again), x)


def test_a_model_that_reads_x_cannot_be_sampled_that_way(tmp_path):
    (tmp_path / "reads_x_models.py").write_text(SOURCE.replace(
        'pyro.sample("x", dist.Normal(self.decoder(z), sigma)', 'pyro.sample("x", dist.Normal(self.decoder(z) + x, sigma)'))
    out = tmp_path / "run"
    assert main(["train", str(_config(tmp_path, "reads_x_models:TinyVAE", epochs=1)), "--out", str(out), *FAST,
                 "--no-plots"]) == 0
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.npy")]) == 2
    assert not (tmp_path / "s.npy").exists()


def test_diagnose_and_report(run, tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", str(run), "--out", str(out), *DIAGNOSE]) == 0
    saved = json.loads((out / "diagnostics.json").read_text())
    info = saved["runs"][0]["info"]
    assert info["program"] == f"{MODULE}:TinyVAE" and info["likelihood"] is None
    assert main(["report", str(run), "--out", str(out), *DIAGNOSE]) == 0
    assert (out / "index.html").is_file() and (out / "report.md").is_file()


def test_resume_continues_exactly_where_the_run_stopped(run, project, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert main(["train", "--resume", str(resumed), "--set", "train.epochs=3", *FAST, "--no-plots"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", str(_config(project, epochs=3)), "--out", str(straight), *FAST, "--no-plots"]) == 0
    got, want = _history(resumed), _history(straight)
    assert len(got) == 3
    # bit-exact on CPU: the param-store global (sigma) and the weights came back from the checkpoint
    assert [(h["train_loss"], h["test_elbo"]) for h in got] == [(h["train_loss"], h["test_elbo"]) for h in want]


@pytest.mark.parametrize("program, words", [
    ("no_such_module_here:TinyVAE", "no module named 'no_such_module_here'"),
    (f"{MODULE}:Missing", "has no attribute 'Missing'"),
    (f"{MODULE}:Broken", "RuntimeError: needs a GPU"),
    (f"{MODULE}:NotAModel", "is not a latent-variable model"),
    (f"{MODULE}.TinyVAE", "expected an import path"),
    (f"{MODULE}:TinyVAE", "model.latent_dim is given together with model.program"),
    ("failing_import_models:TinyVAE", "ZeroDivisionError"),
])
def test_bad_programs_are_one_line_and_write_nothing(project, tmp_path, capsys, program, words):
    (project / "failing_import_models.py").write_text("x = 1 / 0\n")
    cfg = _config(project, program)
    if "latent_dim" in words:
        cfg.write_text(cfg.read_text().replace("[model.args]", "latent_dim = 4\n\n[model.args]"))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("pyro-vae: error: ")
    assert "Traceback" not in err and words in err and "model." in err
    assert not out.exists()


def _tiny_model(project):
    sys.path.insert(0, str(project))
    try:
        return importlib.import_module(MODULE).TinyVAE
    finally:
        sys.path.remove(str(project))


def test_fit_run_dir_is_checked_before_training_and_loads_back_with_model(project, tmp_path):
    TinyVAE = _tiny_model(project)
    x = torch.randn(90, 6)
    cfg = pv.TrainConfig(elbo="trace", epochs=1, batch_size=45, device="cpu")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    model = TinyVAE(6)
    before = [p.detach().clone() for p in model.decoder.parameters()]
    with pytest.raises(pv.PyroVAEError, match="cannot write to"):
        pv.fit(model, x, x, cfg, run_dir=blocked / "run", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.decoder.parameters()))  # nothing was trained

    out = tmp_path / "missing" / "run"
    trained = pv.fit(model, x, x, cfg, run_dir=out, progress=False).model
    assert (out / "checkpoint.pt").is_file()
    with pytest.raises(pv.PyroVAEError, match=r"written by pv.fit from Python.*model=YourModel"):
        pv.load_run(out)
    run = pv.load_run(out, model=TinyVAE(6))
    assert run.config is None and len(run.history) == 1
    want = pv.evaluate(trained, x, iw_samples=5, seed=1)
    got = pv.evaluate(run.model, x, iw_samples=5, seed=1)
    assert got["elbo"] == want["elbo"] and got["log_likelihood"] == want["log_likelihood"]
