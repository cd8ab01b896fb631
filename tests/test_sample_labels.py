"""sample's --given and outputs, a run's evaluation settings on resume, and the names of what evaluation reports.

- ``--given`` is checked against the node it conditions: a label takes an integer class 0..K-1, a real-valued
  input a row of its width; anything else is one line naming the node, K or the width, exit 2, nothing written;
- a conditioned sample is written under its own name (samples-y3-seed0.png) with a title saying what it holds,
  and "samples" means the likelihood's mean given prior latents (``--draws``: draws x ~ p(x)), which agree;
- ``train --resume`` keeps the run's --iw-samples (config.toml's evaluate.iw_samples) unless given again;
- evaluation names its numbers after the model: log p(x|y) and KL(q(z|x,y) || p(z)) for a conditional graph,
  log p(x,y) with a reconstruction that includes log p(y) for M2 scored on labelled rows;
- a negative Monte Carlo KL is explained with its standard error;
- a bad label in a data file is named by its row in the file and its value.
"""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.app import sample as sample_module
from pyro_vae.cli import _format_nodes, main
from pyro_vae.config import config_from_dict
from pyro_vae.report.tables import _runs_table

FAST = ["--quiet", "--no-plots"]

# a conditional VAE on the 8x8 digits: the label y is an input of the decoder and the encoder
DIGITS_CVAE = """
[data]
source = "digits"
binarize = "static"
labels = "y"
[model.nodes.z]
dim = 2
encoder = { hidden = [32] }
[model.nodes.y]
role = "input"
family = "categorical"
dim = 10
[model.nodes.x]
role = "observed"
likelihood = "bernoulli"
parents = ["z", "y"]
net = { hidden = [32] }
[train]
epochs = 2
batch_size = 128
lr = 3e-3
"""

# arrays from a file: a label y (the latent's prior reads it) and a real-valued input u of width 2
ARRAYS_CVAE = """
[data]
train = "data.npz"
arrays = ["x", "y", "u"]
[model.nodes.y]
role = "input"
family = "categorical"
dim = 10
[model.nodes.u]
role = "input"
family = "real"
dim = 2
[model.nodes.z]
dim = 2
parents = ["y"]
net = { hidden = [8] }
encoder = { hidden = [16] }
[model.nodes.x]
role = "observed"
likelihood = "bernoulli"
parents = ["z", "y", "u"]
net = { hidden = [16] }
[train]
epochs = 1
batch_size = 100
"""


def _binary_digits(n=None):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data[:n] > 7).astype(np.float32)
    return x, d.target[:n].astype(np.int64)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits_cvae")
    (folder / "cvae.toml").write_text(DIGITS_CVAE)
    run = folder / "run"
    assert main(["train", str(folder / "cvae.toml"), "--out", str(run), "--iw-samples", "7", *FAST]) == 0
    return run


@pytest.fixture(scope="module")
def arrays_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays_cvae")
    x, y = _binary_digits(400)
    u = np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32)
    np.savez(folder / "data.npz", x=x, y=y, u=u)
    (folder / "cvae.toml").write_text(ARRAYS_CVAE)
    run = folder / "run"
    assert main(["train", str(folder / "cvae.toml"), "--out", str(run), "--iw-samples", "5", *FAST]) == 0
    return run


def _refused(capsys, argv, folder) -> str:
    """The one error line of a command that must fail with exit 2 and write nothing into ``folder``."""
    before = sorted(p.name for p in folder.iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: "), err
    assert sorted(p.name for p in folder.iterdir()) == before
    return err[0]


# -- 1. --given checked against the node ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["12", "-1", "3.7", "cat", "true", "[3]"])
def test_a_label_outside_its_classes_is_refused_naming_the_node_k_and_the_range(digits_run, capsys, value):
    err = _refused(capsys, ["sample", str(digits_run), "-n", "4", "--given", f"y={value}"], digits_run)
    assert "node 'y'" in err and "K = 10" in err and "0..9" in err, err


def test_a_real_input_takes_a_row_of_its_width(arrays_run, capsys, tmp_path):
    for value in ("0.5", "[1.0, 2.0, 3.0]", "[1.0, \"a\"]", "abc"):
        err = _refused(capsys, ["sample", str(arrays_run), "-n", "4", "--given", "y=3", "--given", f"u={value}",
                                "--out", str(tmp_path / "s.npy")], tmp_path)
        assert "node 'u'" in err and "row of 2 numbers" in err and "[0.0, 0.0]" in err, err
    out = tmp_path / "s.npy"
    assert main(["sample", str(arrays_run), "-n", "4", "--given", "y=3", "--given", "u=[0.5, -1]",
                 "--out", str(out)]) == 0
    assert np.load(out).shape == (4, 64)


def test_unknown_and_latent_names_are_refused_with_the_valid_ones(digits_run, capsys):
    err = _refused(capsys, ["sample", str(digits_run), "-n", "4", "--given", "Y=3"], digits_run)
    assert "did you mean 'y'?" in err and "valid: y" in err, err
    err = _refused(capsys, ["sample", str(digits_run), "-n", "4", "--given", "label=3"], digits_run)
    assert "no label or input 'label'" in err and "valid: y" in err, err
    err = _refused(capsys, ["sample", str(digits_run), "-n", "4", "--given", "z=0"], digits_run)
    assert "latent node" in err and "(y)" in err, err


# -- 2. named outputs, titles, one meaning of "samples" ---------------------------------------------------


def test_a_conditioned_sample_has_its_own_file_and_a_title_saying_what_it_holds(digits_run, capsys, monkeypatch):
    titles = []
    real = sample_module.save_image_grid

    def recording(images, shape, path, ncols=10, title=None):
        titles.append(title)
        return real(images, shape, path, ncols=ncols, title=title)

    monkeypatch.setattr(sample_module, "save_image_grid", recording)
    # the input y has no distribution: without --given there is nothing to draw x given
    _refused(capsys, ["sample", str(digits_run), "-n", "9"], digits_run)
    assert main(["sample", str(digits_run), "-n", "16", "--given", "y=3"]) == 0
    printed = capsys.readouterr().out
    assert (digits_run / "samples-y3-seed0.png").is_file()
    assert titles[-1] == "16 samples given y = 3: the mean of p(x | latents, y), latents ~ prior"
    assert printed.strip() == f"wrote {titles[-1]} to {digits_run / 'samples-y3-seed0.png'}"
    assert main(["sample", str(digits_run), "-n", "16", "--given", "y=7", "--draws"]) == 0
    assert (digits_run / "draws-y7-seed0.png").is_file() and (digits_run / "samples-y3-seed0.png").is_file()
    assert titles[-1] == "16 samples given y = 7: draws of x ~ p(x | y)"


def test_samples_are_means_of_p_x_given_prior_latents_and_draws_agree_with_them(digits_run, tmp_path):
    n = 2000
    means, draws = tmp_path / "means.npy", tmp_path / "draws.npy"
    assert main(["sample", str(digits_run), "-n", str(n), "--given", "y=3", "--out", str(means)]) == 0
    assert main(["sample", str(digits_run), "-n", str(n), "--given", "y=3", "--out", str(draws), "--draws",
                 "--seed", "1"]) == 0
    m, d = np.load(means), np.load(draws)
    assert m.shape == d.shape == (n, 64)
    # Bernoulli means lie strictly inside (0, 1); draws are bits
    assert ((m > 0) & (m < 1)).all() and set(np.unique(d)) <= {0.0, 1.0}
    # E[x] over the prior is the average of the means: the two files estimate the same pixel means
    se = np.sqrt(m.var(0, ddof=1) / n + d.var(0, ddof=1) / n)
    z = np.abs(m.mean(0) - d.mean(0)) / np.maximum(se, 1e-12)
    assert z.max() < 4.5, z.max()  # 64 pixels: the largest of 64 |N(0, 1)| is below 4.5 but for 1 in 2000


# -- 3. resume keeps the run's evaluation settings -------------------------------------------------------


def test_resume_keeps_the_iw_samples_the_run_started_with_unless_given_again(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    assert "[evaluate]\niw_samples = 7" in (run / "config.toml").read_text()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3", *FAST]) == 0
    assert json.loads((run / "metrics.json").read_text())["iw_samples"] == 7
    assert "K = 7" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--set", "train.epochs=4", "--iw-samples", "9", *FAST]) == 0
    assert json.loads((run / "metrics.json").read_text())["iw_samples"] == 9
    assert "[evaluate]\niw_samples = 9" in (run / "config.toml").read_text()


def test_auto_iw_samples_are_recorded_as_the_number_used(tmp_path):
    config = config_from_dict({"data": {"source": "synthetic", "num_points": 100, "synthetic_dim": 4},
                               "model": {"latent_dim": 2, "likelihood": "normal",
                                         "encoder": {"hidden": [4]}, "decoder": {"hidden": [4]}},
                               "train": {"epochs": 1, "batch_size": 30}})
    run = pv.train(config, tmp_path / "run", progress=False, plots=False)
    assert run.config.evaluate.iw_samples == 1000 and run.metrics["iw_samples"] == 1000
    assert pv.load_config(tmp_path / "run" / "config.toml", run=True).evaluate.iw_samples == 1000
    with pytest.raises(pv.PyroVAEError, match=r"evaluate.iw_samples: must be >= 1"):
        config_from_dict({"evaluate": {"iw_samples": 0}})


# -- 4. what the numbers are --------------------------------------------------------------------------------


def test_a_conditional_graph_reports_log_p_x_given_y_and_its_kl(digits_run, arrays_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(digits_run), "--iw-samples", "5"]) == 0
    text = capsys.readouterr().out
    assert "log p(x|y) (importance sampled)" in text and "reconstruction E_q[log p(x|y,z)]" in text
    assert "KL(q(z|x,y) || p(z))" in text and "log p(x) " not in text, text
    assert main(["evaluate", str(arrays_run), "--iw-samples", "5", "--json"]) == 0
    q = json.loads(capsys.readouterr().out)["quantities"]
    # the latent's prior reads y, not u; the decoder reads both
    assert q["log_likelihood"] == "log p(x|y,u)" and q["kl"] == "KL(q(z|x,y,u) || p(z|y))"
    assert q["reconstruction"] == "E_q[log p(x|y,u,z)]"
    assert q["elbo"] == "E_q[log p(x|y,u,z)] - KL(q(z|x,y,u) || p(z|y)): a lower bound on log p(x|y,u)"
    saved = json.loads((digits_run / "metrics.json").read_text())
    assert saved["quantities"]["log_likelihood"] == "log p(x|y)"


M2 = {"data": {"source": "digits", "labels": "y"},
      "model": {"nodes": {"y": {"role": "partial", "family": "categorical", "dim": 10, "encoder": {"hidden": [8]}},
                          "z": {"dim": 2, "encoder": {"hidden": [8]}},
                          "x": {"role": "observed", "likelihood": "bernoulli", "parents": ["y", "z"],
                                "net": {"hidden": [8]}}}},
      "train": {"elbo": "enum"}}


def test_m2_scored_on_labelled_rows_says_its_numbers_include_log_p_y():
    cfg = config_from_dict(M2)
    torch.manual_seed(0)
    model = pv.build_model(cfg.model, 64)
    x, y = _binary_digits(20)
    labelled = pv.evaluate_points(model, {"x": torch.tensor(x), "y": torch.tensor(y)}, iw_samples=5)
    q = labelled.summary()["quantities"]
    assert q["log_likelihood"] == "log p(x,y)" and q["kl"] == "KL(q(z|x,y) || p(z))"
    assert q["reconstruction"] == "E_q[log p(x|y,z) + log p(y)]"
    # the reconstruction is the sum of the two observed nodes' terms, log p(y) among them
    nodes = {t.name: t for t in labelled.site_terms}
    assert torch.allclose(labelled.reconstruction, nodes["x"].term + nodes["y"].term)
    assert float(nodes["y"].term.mean()) == pytest.approx(-math.log(10), abs=1e-6)  # the uniform p(y)
    unlabelled = pv.evaluate_points(model, torch.tensor(x), iw_samples=5).summary()["quantities"]
    assert unlabelled["log_likelihood"] == "log p(x)" and unlabelled["kl"] == "KL(q(y,z|x) || p(y,z))"


def test_the_report_names_each_runs_log_likelihood():
    def run(name, quantity):
        info = {"objective": "meanfield", "guide": "normal", "epochs": 1, "test_elbo": -1.0, "log_likelihood": -0.5,
                "log_likelihood_se": 0.1, "log_likelihood_quantity": quantity}
        return SimpleNamespace(name=name, info=info, latent_labels=["z[0]"], contraction=[0.0])

    same = _runs_table(SimpleNamespace(runs=[run("a", "log p(x|y)"), run("b", "log p(x|y)")]))[0]
    assert same.columns[-2:] == ["log p(x|y)", "log p(x|y) s.e."] and "log p(x|y)" in same.note
    mixed = _runs_table(SimpleNamespace(runs=[run("a", "log p(x|y)"), run("b", "log p(x)")]))[0]
    assert "of" in mixed.columns and [r[mixed.columns.index("of")] for r in mixed.rows] == ["log p(x|y)", "log p(x)"]


# -- 5. a negative Monte Carlo KL -----------------------------------------------------------------------------


def _metrics(term, se):
    return {"nodes": [{"name": "z1", "kind": "latent", "method": "monte_carlo", "term": term, "se": se, "dims": 2},
                      {"name": "z2", "kind": "latent", "method": "analytic", "term": 0.5, "se": 0.0, "dims": 2},
                      {"name": "x", "kind": "observed", "method": "monte_carlo", "term": -40.0, "se": 0.1, "dims": 64}]}


def test_a_negative_monte_carlo_kl_is_explained_with_its_standard_error():
    noise = _format_nodes(_metrics(-0.012, 0.01))
    assert "note: z1's Monte Carlo KL -0.012 is negative" in noise and "1.2 s.e. below 0" in noise
    assert "unbiased estimate" in noise and "within the 2 s.e." in noise
    beyond = _format_nodes(_metrics(-0.5, 0.01))
    assert "50.0 s.e. below 0, more than noise explains" in beyond and "raise --iw-samples" in beyond
    assert "note:" not in _format_nodes(_metrics(0.3, 0.01))


# -- 6. bad labels named by row and value ----------------------------------------------------------------------


@pytest.mark.parametrize("row,value,phrase", [(17, 12, "row 17 has 12"), (1500, -1, "row 1500 has -1")])
def test_a_bad_label_is_named_by_its_row_in_the_file_and_its_value(tmp_path, capsys, row, value, phrase):
    x, y = _binary_digits()
    y[row] = value
    np.savez(tmp_path / "data.npz", x=x, y=y, u=np.zeros((len(y), 2), dtype=np.float32))
    (tmp_path / "cvae.toml").write_text(ARRAYS_CVAE)
    # the held-out split permutes the rows: the message still counts them as the file does
    err = _refused(capsys, ["train", str(tmp_path / "cvae.toml"), "--out", str(tmp_path / "run"), *FAST], tmp_path)
    assert f"data.train's array 'y' {phrase}" in err and "integers in 0..9" in err, err
    if value == -1:
        assert "fill in its missing (-1) rows" in err
