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


@pytest.mark.slow
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


# -- the probe that finds which array a site observes --------------------------------------------------


class ProdLDA(nn.Module):
    """Pyro's ProdLDA tutorial, shrunk: batch norm in the guide and the decoder, a multinomial of each document."""

    latent_sites = ("logtheta",)
    obs_site = "obs"

    def __init__(self, vocab, topics=3, hidden=16):
        super().__init__()
        self.topics = topics
        self.body = nn.Sequential(nn.Linear(vocab, hidden), nn.Softplus())
        self.loc, self.logvar = nn.Linear(hidden, topics), nn.Linear(hidden, topics)
        self.bn_loc, self.bn_logvar = nn.BatchNorm1d(topics, affine=False), nn.BatchNorm1d(topics, affine=False)
        self.beta = nn.Linear(topics, vocab, bias=False)
        self.bn = nn.BatchNorm1d(vocab, affine=False)

    def model(self, docs):
        pyro.module("prodlda", self)
        with pyro.plate("data", docs.shape[0]):
            logtheta = pyro.sample("logtheta", dist.Normal(docs.new_zeros(self.topics), 1.0).to_event(1))
            probs = F.softmax(self.bn(self.beta(F.softmax(logtheta, -1))), -1)
            pyro.sample("obs", dist.Multinomial(int(docs.sum(-1).max()), probs), obs=docs)

    def guide(self, docs):
        pyro.module("prodlda", self)
        with pyro.plate("data", docs.shape[0]):
            h = self.body(docs)
            scale = (0.5 * self.bn_logvar(self.logvar(h))).exp()
            pyro.sample("logtheta", dist.Normal(self.bn_loc(self.loc(h)), scale).to_event(1))


def _documents(n=200, vocab=12, length=20, seed=0):
    """Documents of ``length`` words from three topics, as a (n, vocab) count matrix."""
    rng = np.random.default_rng(seed)
    topics = rng.dirichlet(np.ones(vocab), size=3)
    return np.stack([rng.multinomial(length, topics[k]) for k in rng.integers(0, 3, n)]).astype(np.float32)


def test_the_probe_runs_a_batch_norm_program_in_eval_mode_and_leaves_its_modes_and_statistics():
    from pyro_vae.infer.sites import observed_name

    docs = torch.as_tensor(_documents())
    m = ProdLDA(docs.shape[1])
    stats = [b.clone() for b in m.buffers()]
    # the observations are passed as obs=docs, under another name than the site's: found by identity
    assert observed_name(m, {"docs": docs}) == "docs"
    assert all(mod.training for mod in m.modules())
    assert all(torch.equal(a, b) for a, b in zip(stats, m.buffers()))
    t = pv.fit(m, {"docs": docs[:150]}, {"docs": docs[150:]},
               pv.TrainConfig(elbo="trace", epochs=2, batch_size=50, device="cpu"), progress=False)
    assert all(np.isfinite(h["test_elbo"]) for h in t.state.history)


class Misbuilt(nn.Module):
    """Pyro's VAE tutorial reshapes its data to the 784 pixels it was built for: other data fail in the model."""

    latent_sites = ("z",)
    obs_site = "obs"

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(2, 784)
        self.enc = nn.Linear(784, 2)

    def model(self, images):
        pyro.module("misbuilt", self)
        with pyro.plate("data", images.shape[0]):
            z = pyro.sample("z", dist.Normal(images.new_zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=images.reshape(-1, 784))

    def guide(self, images):
        pyro.module("misbuilt", self)
        with pyro.plate("data", images.shape[0]):
            pyro.sample("z", dist.Normal(self.enc(images.reshape(-1, 784)), 1.0).to_event(1))


def test_a_program_that_fails_on_the_probe_is_reported_with_its_own_error():
    images, _ = _digits(40)  # 64 pixels, not 784
    with pytest.raises(pv.PyroVAEError) as e:
        pv.fit(Misbuilt(), {"images": images}, None, pv.TrainConfig(epochs=1, batch_size=20), progress=False)
    msg = str(e.value)
    # the program's own exception, by name, where a guess at its consequence used to stand
    assert "\n" not in msg and "RuntimeError: shape '[-1, 784]' is invalid" in msg
    assert "do not include the observations" not in msg


# -- count likelihoods: sampled on real rows --------------------------------------------------------


COUNT_PROGRAM = '''
import pyro, pyro.distributions as dist, torch, torch.nn as nn, torch.nn.functional as F


class CountVAE(nn.Module):
    """Documents as word counts: a multinomial whose number of trials is read off the rows."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, data_dim, z_dim=2, hidden=16):
        super().__init__()
        self.z_dim = z_dim
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, data_dim))
        self.enc = nn.Sequential(nn.Linear(data_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim))

    def model(self, x):
        pyro.module("count_vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Multinomial(int(x.sum(-1).max()), logits=self.dec(z)), obs=x)

    def guide(self, x):
        pyro.module("count_vae", self)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc(torch.log1p(x)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))


class ReadsWords(CountVAE):
    """Its word probabilities read the row's words themselves: no draw from p(x | the row's total)."""

    def model(self, x):
        pyro.module("count_vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Multinomial(int(x.sum(-1).max()), logits=self.dec(z) + x), obs=x)
'''


def test_a_count_model_samples_with_the_totals_of_real_rows(tmp_path, capsys):
    module = _module_name("counts", tmp_path)
    (tmp_path / f"{module}.py").write_text(COUNT_PROGRAM)
    np.save(tmp_path / "docs.npy", _documents(length=20))
    (tmp_path / "c.toml").write_text(f'[data]\ntrain = "docs.npy"\n[model]\nprogram = "{module}:CountVAE"\n'
                                     '[train]\nelbo = "trace"\nepochs = 1\nbatch_size = 50\n')
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "c.toml"), "--out", str(run), "--quiet", "--iw-samples", "5"]) == 0
    assert main(["sample", str(run), "-n", "7", "--draws", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    # every draw holds as many words as the documents it was traced on (all-zero rows would ask for none)
    assert s.shape == (7, 12) and (s.sum(1) == 20).all() and (s == np.round(s)).all() and (s >= 0).all()
    # the samples by default, the means of p(x | latents), hold the same totals
    assert main(["sample", str(run), "-n", "7", "--out", str(tmp_path / "m.npy")]) == 0
    m = np.load(tmp_path / "m.npy")
    assert m.shape == (7, 12) and np.allclose(m.sum(1), 20, rtol=1e-5) and (m >= 0).all()
    # a program that reads more of a row than its total is refused in one line
    from pyro_vae.models.sampling import prior_predictive

    program = importlib.import_module(module)
    docs = torch.as_tensor(_documents(n=10, length=20))
    with pytest.raises(pv.PyroVAEError, match="reads the values of x, not only each row's total count"):
        prior_predictive(program.ReadsWords(12), 5, 12, template=docs)
    # without real rows there is no number of trials to draw with: one line, the program's own words
    with pytest.raises(pv.PyroVAEError, match="cannot sample n_sample <= 0"):
        prior_predictive(program.CountVAE(12), 5, 12)


def test_real_rows_leave_the_draws_of_a_program_that_reads_only_its_rows_number_unchanged():
    from pyro_vae.models.sampling import prior_predictive

    m = pv.build_model(pv.ModelConfig(latent_dim=2, likelihood="bernoulli"), 12)
    rows = torch.bernoulli(torch.full((9, 12), 0.5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior_predictive(m, 6, 12, seed=3, template=rows), prior_predictive(m, 6, 12, seed=3))


# -- pv.fit as Pyro users call SVI: NumPy data, (model, guide) functions -----------------------------


def _tutorial_pair(dim, z_dim=2, hidden=32):
    """Pyro's VAE tutorial as two functions: networks registered with pyro.module, a prior location with pyro.param."""
    decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
    encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))

    def model(x):
        pyro.module("decoder", decoder)
        prior_loc = pyro.param("prior_loc", torch.zeros(z_dim))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(prior_loc, 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))

    return model, guide


def test_fit_takes_a_model_guide_pair_of_functions_on_numpy_data():
    x, _ = _digits(600)
    x = x.astype(np.float64)  # as NumPy gives it
    model, guide = _tutorial_pair(64)
    pyro.set_rng_seed(0)
    before = pv.evaluate((model, guide), x[500:], iw_samples=20)["log_likelihood"]
    t = pv.fit((model, guide), x[:500], x[500:], pv.TrainConfig(elbo="trace", epochs=4, batch_size=50, lr=3e-3,
                                                                device="cpu"), progress=False)
    assert t.model.obs_site == "obs" and t.model.latent_sites == ("z",)
    # every parameter the functions register was trained: the networks' weights and the pyro.param
    assert "param_store:prior_loc" in t.param_names and any("decoder$$$" in n for n in t.param_names)
    assert not torch.equal(pyro.param("prior_loc").detach(), torch.zeros(2))
    history = [h["test_elbo"] for h in t.state.history]
    assert history[-1] > history[0]
    # the pair evaluates at its trained parameters, exactly as the wrapped model does
    after = pv.evaluate((model, guide), x[500:], iw_samples=20)
    wrapped = pv.evaluate(t.model, x[500:], iw_samples=20)
    assert {k: v for k, v in after.items() if k != "seconds_evaluate"} == \
        {k: v for k, v in wrapped.items() if k != "seconds_evaluate"}
    assert after["log_likelihood"] > before
    # as under SVI, a second fit goes on from the trained parameters
    again = pv.fit((model, guide), x[:500], x[500:], pv.TrainConfig(elbo="trace", epochs=1, batch_size=50, lr=3e-3,
                                                                    device="cpu"), progress=False)
    assert again.state.history[0]["test_elbo"] > history[0]


def test_fit_takes_a_mapping_of_numpy_arrays_and_refuses_arrays_of_text_in_one_line():
    x, y = _digits(300)
    decoder = nn.Sequential(nn.Linear(2 + 10, 32), nn.ReLU(), nn.Linear(32, 64))
    encoder = nn.Sequential(nn.Linear(64 + 10, 32), nn.ReLU(), nn.Linear(32, 4))

    def model(x, y):  # a conditional VAE: the label is an input, the first array the observations
        pyro.module("cdecoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            label = F.one_hot(y, 10).to(z.dtype).expand(z.shape[:-1] + (10,))
            pyro.sample("x", dist.Bernoulli(logits=decoder(torch.cat([z, label], -1))).to_event(1), obs=x)

    def guide(x, y):
        pyro.module("cencoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(torch.cat([x, F.one_hot(y, 10).to(x.dtype)], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))

    data = {"x": x[:250], "y": y[:250]}  # float32 pixels, int64 labels (which stay integers)
    t = pv.fit((model, guide), data, {"x": x[250:], "y": y[250:]},
               pv.TrainConfig(elbo="trace", epochs=1, batch_size=50, device="cpu"), progress=False)
    assert t.model.obs_site == "x" and np.isfinite(t.state.history[-1]["test_elbo"])
    with pytest.raises(pv.PyroVAEError, match=r"^train_x\['y'\] is a NumPy array of <U1 values, not numbers"):
        pv.fit((model, guide), {"x": x, "y": np.array(["a"] * len(x))}, None, pv.TrainConfig(epochs=1))


# -- the public API is documented --------------------------------------------------------------------


def _public_namespaces():
    yield pv
    for sub in pkgutil.iter_modules(pv.__path__):
        if sub.ispkg and not sub.name.startswith("_"):
            yield importlib.import_module(f"pyro_vae.{sub.name}")


def _own_doc(obj) -> str:
    """A class's or function's own docstring; a dataclass's generated signature does not count."""
    doc = (obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__) or ""
    return "" if doc.strip().startswith(f"{obj.__name__}(") else doc.strip()


def test_every_public_class_function_and_method_has_a_docstring():
    missing, classes = [], {}
    for ns in _public_namespaces():
        for name in getattr(ns, "__all__", ()):  # a subpackage without one declares no public names
            obj = getattr(ns, name)
            if inspect.isclass(obj) or inspect.isroutine(obj):
                if not _own_doc(obj):
                    missing.append(f"{ns.__name__}.{name}")
                if inspect.isclass(obj) and obj.__module__.startswith("pyro_vae"):
                    classes[obj] = f"{ns.__name__}.{name}"
    for cls, where in classes.items():
        for attr, value in vars(cls).items():
            fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if not attr.startswith("_") and inspect.isfunction(fn) and not (fn.__doc__ or "").strip():
                missing.append(f"{where}.{attr}")
    assert not missing, missing
    # the training keys, each named in TrainConfig's own docstring
    import dataclasses

    doc = _own_doc(pv.TrainConfig)
    assert all(f"``{f.name}``" in doc for f in dataclasses.fields(pv.TrainConfig))


# -- the README's own program, as shipped ---------------------------------------------------------------


def _readme_blocks(after: str):
    """The README's fenced blocks (language, text) that follow the paragraph holding ``after``."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rest = text[text.index(after):]
    return re.findall(r"```(\w+)\n(.*?)```", rest, re.S)


def test_the_readmes_own_program_ships_in_examples_and_runs_as_the_readme_says(tmp_path, monkeypatch, capsys):
    import shutil
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "examples" / "own_program"
    (lang, toml), (shell, commands) = _readme_blocks("This example ships in `examples/own_program/`")[:2]
    assert (lang, shell) == ("toml", "bash")
    assert toml == (shipped / "cvae.toml").read_text()  # the README shows the file as it is
    folder = tmp_path / "own_program"
    shutil.copytree(shipped, folder, ignore=shutil.ignore_patterns("digits.npz", "runs", "__pycache__"))
    monkeypatch.chdir(folder)
    # what each command adds to be brief: fewer epochs and draws, a diagnosis of 3 points
    brief = {"train": ["--set", "train.epochs=2", "--iw-samples", "5", "--quiet"], "sample": [],
             "evaluate": ["--iw-samples", "5"], "diagnose": DIAGNOSE_FAST}
    ran = []
    for line in commands.strip().splitlines():
        for command in line.split("#")[0].split("&&"):
            words = shlex.split(command)
            if words[0] == "cd":
                assert Path(words[1]).name == folder.name  # the README's folder is the copy's
            elif words[0] == "python3":
                subprocess.run([sys.executable, *words[1:]], check=True, capture_output=True)
            else:
                assert words[0] == "pyro-vae", line
                assert main(words[1:] + brief[words[1]]) == 0, (command, capsys.readouterr().err)
                ran.append(words[1])
    assert ran == ["train", "sample", "evaluate", "diagnose"]
    samples = np.load(folder / "runs" / "cvae" / "samples-y3-seed0.npy")  # the file the README's comment names
    # the means of a Bernoulli p(x | latents, y): probabilities
    assert samples.shape == (64, 64) and (samples >= 0).all() and (samples <= 1).all() and len(np.unique(samples)) > 2
    assert (folder / "runs" / "cvae-report" / "diagnostics.json").is_file()
    # the program it ran is the shipped one, with the README's [model.args]
    config = (folder / "runs" / "cvae" / "config.toml").read_text()
    assert 'program = "my_models:CVAE"' in config and "hidden = 64" in config
