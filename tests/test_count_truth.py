"""A synthetic source's truth saved in the run folder as data (truth.npz, no pickle), and what a model recovered
of it: the inverse dispersion and dropout per feature read off the observed law, topics matched by cosine."""

import json
import math

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.data.synthetic_counts import synthetic_counts_truth
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluation.recovery import recovery, topic_recovery
from pyro_vae.store.truth import TRUTH_FILE, read_truth, write_truth


def test_truth_round_trips_as_arrays_without_pickle(tmp_path):
    truth = {"theta": torch.tensor([1.0, 2.5]), "alpha": 0.1, "vocabulary": ("a", "b$"), "steps": 3,
             "flag": True, "fn": print}
    write_truth(tmp_path, truth)
    with np.load(tmp_path / TRUTH_FILE, allow_pickle=False) as f:
        assert sorted(f.files) == ["alpha", "steps", "theta", "vocabulary"]
    back = read_truth(tmp_path)
    np.testing.assert_array_equal(back["theta"], [1.0, 2.5])
    assert float(back["alpha"]) == 0.1 and list(back["vocabulary"]) == ["a", "b$"] and int(back["steps"]) == 3
    assert write_truth(tmp_path / "none", None) is None and read_truth(tmp_path / "none") is None


def test_a_corrupt_truth_file_is_one_line(tmp_path):
    (tmp_path / TRUTH_FILE).write_bytes(b"not a zip")
    with pytest.raises(PyroVAEError, match="not a readable truth file"):
        read_truth(tmp_path)


def _zinb(d, theta, dropout):
    """A ZINB VAE whose law is set by hand: theta per feature, every row's dropout probability ``dropout``."""
    model = pv.GraphModel(pv.ModelConfig(latent_dim=1, likelihood="zinb", library="observed",
                                         encoder={"hidden": []}, decoder={"hidden": []}), data_dim=d)
    dec = next(m for m in model.nets["x"].modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        model.likelihood.log_theta.copy_(torch.log(theta))
        dec.weight.zero_()
        dec.bias.zero_()
        dec.bias[d:2 * d] = torch.logit(dropout)  # the gate block: no dependence on z
    return model


def test_recovery_reads_theta_and_dropout_off_the_law():
    d = 5
    theta, dropout = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0]), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    model = _zinb(d, theta, dropout)
    x = torch.poisson(torch.full((30, d), 3.0), generator=torch.Generator().manual_seed(0))
    # the truth 10% below the learned theta, 20% below the learned dropout: those are the relative errors
    truth = {"theta": (theta / 1.1).numpy(), "dropout": (dropout / 1.25).numpy(), "W": np.zeros((d, 2))}
    r = recovery(model, x, truth, draws=2)
    assert r.theta.median_relative_error == pytest.approx(0.1, rel=1e-5)
    assert r.dropout.median_relative_error == pytest.approx(0.25, rel=1e-5)
    np.testing.assert_allclose(r.theta.learned, theta.numpy(), rtol=1e-5)
    np.testing.assert_allclose(r.dropout.learned, dropout.numpy(), rtol=1e-5)
    assert r.points == 30 and r.draws == 2 and r.topics is None
    # a Poisson model learns neither: nothing to report
    poisson = pv.GraphModel(pv.ModelConfig(latent_dim=1, likelihood="poisson"), data_dim=d)
    assert recovery(poisson, x, truth) is None


def test_topic_recovery_matches_a_permutation_one_to_one():
    g = np.random.default_rng(0)
    true = g.dirichlet(np.full(30, 0.1), size=4)
    learned = true[[2, 0, 3, 1]]
    r = topic_recovery(learned, true)
    assert r.matched == [1, 3, 0, 2] and r.matched_mean == pytest.approx(1.0)
    # a learned topic halfway between two true ones: cosines strictly below 1, the matching still one-to-one
    mixed = learned.copy()
    mixed[0] = 0.5 * (true[2] + true[0])
    r = topic_recovery(mixed, true)
    assert sorted(r.matched) == [0, 1, 2, 3] and r.matched_mean < 1.0
    cos = true[2] @ mixed[0] / (np.linalg.norm(true[2]) * np.linalg.norm(mixed[0]))
    assert r.cosine[2][0] == pytest.approx(cos)


_CONFIG = """
[data]
source = "synthetic_counts"
num_points = 300
synthetic_dim = 12
synthetic_latent_dim = 2
synthetic_dropout = 0.2
[model]
latent_dim = 2
likelihood = "zinb"
library = "observed"
encoder = { hidden = [8] }
decoder = { hidden = [8] }
[train]
epochs = 1
batch_size = 100
seed = 0
capture = "off"
"""


def test_a_synthetic_counts_run_saves_its_truth_beside_it(tmp_path):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(_CONFIG)
    run = pv.train(pv.load_config(str(cfg_path)), tmp_path / "run", iw_samples=None, plots=False)
    saved = read_truth(run.run_dir)
    expected = synthetic_counts_truth(run.config.data)
    for name in ("theta", "dropout", "W", "b"):
        np.testing.assert_allclose(saved[name], expected[name].double().numpy())
    assert len(run.metrics["recovery"]["dropout"]["learned"]) == 12


@pytest.mark.slow
def test_a_synthetic_counts_run_reports_recovery_in_train_evaluate_and_its_plots(tmp_path, capsys):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(_CONFIG)
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run), "--iw-samples", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recovery of the synthetic source's truth" in out and "dropout probability per feature" in out
    saved = read_truth(run)
    expected = synthetic_counts_truth(pv.load_run(run).config.data)
    for name in ("theta", "dropout", "W", "b"):
        np.testing.assert_allclose(saved[name], expected[name].double().numpy())
    metrics = json.loads((run / "metrics.json").read_text())
    rel = metrics["recovery"]["theta"]["median_relative_error"]
    assert math.isfinite(rel) and len(metrics["recovery"]["theta"]["true"]) == 12
    assert (run / "plots" / "recovery.png").stat().st_size > 0
    assert main(["evaluate", str(run), "--iw-samples", "5", "--quiet"]) == 0
    assert f"{rel:.1%}" in capsys.readouterr().out
    # the report: a recovery table and the learned-against-true figure, from the run's metrics.json
    diag = tmp_path / "diag"
    assert main(["diagnose", str(run), "--out", str(diag), "--points", "2", "--reference", "none", "--sbc-sims", "0",
                 "--draws", "50", "--quiet"]) == 0
    assert main(["report", str(run), "--out", str(diag)]) == 0
    report = (diag / "report.md").read_text()
    assert "Recovery of the synthetic source's truth" in report and f"{rel:.4g}" in report
    assert (diag / "figures" / "recovery_run.png").stat().st_size > 0
