"""A chain's report (report/figures.py, diagnostics/sequences.py): diagnose saves each diagnosed sequence's length
and fit, and `pyro-vae report` draws observed against reconstructed traces, q's latent trajectories against the
Kalman smoother's, and the per-step KL profile, never at padded steps."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import MAX_STEP_ROWS, _format_metrics, _format_steps, main
from pyro_vae.config import config_from_dict
from pyro_vae.diagnostics.results import SequenceFit
from pyro_vae.figures import sequences as seqfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sequence_linear_gaussian.toml"
PAD = 1e6  # what a padded step holds in the arrays below: a figure that drew it would reach it


def _fit(m=3, t=8, d=2, z=2, draws=16, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([8, 5, 3])[:m]
    x, recon = rng.normal(size=(m, t, d)), rng.normal(size=(draws, m, t, d))
    zq, ref = rng.normal(size=(draws, m, t, z)), rng.normal(size=(m, t, z))
    for i, n in enumerate(lengths):
        x[i, n:], recon[:, i, n:], zq[:, i, n:], ref[i, n:] = PAD, PAD, PAD, PAD
    return SequenceFit(x, lengths, recon, zq, ref, np.ones((m, t, z)))


def test_the_fit_figure_draws_no_padded_step(tmp_path, monkeypatch):
    """Every line and band of each sequence's panels stops at its length, and none reaches the padding's values."""
    drawn = []
    monkeypatch.setattr(seqfig, "save_figure", lambda fig, path: drawn.append(fig) or path)
    f = _fit()
    seqfig.save_sequence_fit(f.data, f.lengths, f.reconstructions, f.z, tmp_path / "fit.png",
                             ref_mean=f.reference_mean, ref_sd=f.reference_sd)
    axes = np.array(drawn[0].axes).reshape(2, 3)
    for col, n in enumerate(f.lengths):
        for ax in axes[:, col]:
            lines = ax.get_lines()
            assert len(lines) >= 2
            for line in lines:
                xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
                assert xs.max() <= n and np.abs(ys).max() < PAD / 10
            for band in ax.collections:
                verts = np.concatenate([p.vertices for p in band.get_paths()])
                assert verts[:, 0].max() <= n and np.abs(verts[:, 1]).max() < PAD / 10
    assert any(line.get_linestyle() == "--" for line in axes[1, 0].get_lines())  # the Kalman smoother's means


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seqreport")
    run, diag = tmp / "run", tmp / "diag"
    assert main(["train", str(EXAMPLE), "--out", str(run), "--set", "train.epochs=1", "--set", "data.num_points=60",
                 "--set", "data.sequence_length=10", "--set", "data.min_length=4", "--quiet"]) == 0
    assert main(["diagnose", str(run), "--out", str(diag), "--points", "3", "--draws", "64", "--local-steps", "5",
                 "--sbc-sims", "0", "--quiet"]) == 0
    assert main(["report", str(run), "--out", str(diag), "--quiet"]) == 0
    return run, diag


@pytest.mark.slow
def test_the_report_of_a_chain_shows_its_sequences(reported):
    run, diag = reported
    results = json.loads((diag / "results.json").read_text())
    files = {f["file"]: f for f in results["figures"]}
    fit, steps = "figures/sequence_fit_run.png", "figures/steps_run.png"
    assert fit in files and steps in files and files[fit]["section"] == "sequences"
    assert "Kalman smoother" in files[fit]["caption"]
    # the flattened steps of a chain are no image and no vector: none of the generic decoded figures
    assert not any(k in f for f in files for k in ("reconstructions", "samples", "traversal"))
    page = (diag / "index.html").read_text()
    assert "Sequences over time" in page and "the ELBO&#x27;s terms per time step" in page
    for name in (fit, steps):
        png = (diag / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the diagnosed sequences' lengths are the test data's, saved beside the draws and read back
    with np.load(diag / "run" / "sequences.npz") as z:
        lengths, data = z["lengths"], z["data"]
    assert data.shape[0] == 3 and data.shape[1] == 10 and 4 <= lengths.min() and lengths.max() <= 10
    metrics = json.loads((run / "metrics.json").read_text())
    saved = json.loads((diag / "diagnostics.json").read_text())["runs"][0]["step_profile"]
    assert saved["sequences"] == metrics["steps"]["sequences"]


# -- evaluate's numbers for a chain: per sequence, its length given, and a short per-step table ------------------


def _chain_and_data(n=6, t=12, seed=0):
    cfg = config_from_dict({"model": {"nodes": {
        "z": {"dim": 2, "over": "time", "transition": {"type": "linear"}, "rnn": {"type": "gru", "hidden": 8},
              "encoder": {"hidden": [8]}},
        "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"], "net": {"hidden": []}}}},
        "train": {"seed": 0}})
    torch.manual_seed(seed)
    model = pv.build_model(cfg.model, 3)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, t + 1, (n,), generator=g)
    return model, {"x": torch.randn(n, t, 3, generator=g), "lengths": lengths}


def test_a_chain_reads_log_px_per_sequence_with_its_length_given(capsys):
    model, data = _chain_and_data()
    m = pv.evaluate_points(model, data, iw_samples=25).summary()
    q = m["quantities"]
    assert q["log_likelihood"] == "log p(x)" and "lengths" not in json.dumps(q)
    assert q["per"].startswith("sequence") and q["kl"].startswith("KL(q(z_1..z_12|x) ||")
    assert len(m["steps"]["steps"]) == 12  # the whole profile stays in the JSON
    text = _format_metrics(m) + "\n" + _format_steps(m)
    assert text.startswith("per sequence, in nats, on 6 sequences") and "log p(x) (importance sampled)" in text
    step_rows = [ln for ln in text.splitlines() if re.match(r"^\s+\d+\s+\d+\s", ln)]
    assert len(step_rows) == MAX_STEP_ROWS < 12 and "largest" in text and "all 12 steps: --json" in text


def test_an_input_named_lengths_of_a_model_without_time_stays_a_conditioning():
    """Only a chain's lengths are the sequences' lengths: a CVAE's input of that name is what it conditions on."""
    cfg = config_from_dict({"model": {"nodes": {
        "lengths": {"role": "input", "family": "real", "dim": 1},
        "z": {"dim": 2, "parents": ["lengths"]},
        "x": {"role": "observed", "likelihood": "normal", "parents": ["z", "lengths"]}}}})
    torch.manual_seed(0)
    model = pv.build_model(cfg.model, 3)
    q = pv.evaluate_points(model, {"x": torch.randn(5, 3), "lengths": torch.randn(5, 1)}, iw_samples=5).summary()
    assert q["quantities"]["log_likelihood"] == "log p(x|lengths)" and q["quantities"]["per"] == "data point"


def _edit_json(path: Path, edit) -> None:
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


@pytest.mark.slow
@pytest.mark.parametrize("corrupt, message", [
    (lambda d: (d / "run" / "sequences.npz").write_bytes(b"not a zip"), "sequences.npz is not an .npz"),
    (lambda d: np.savez(d / "run" / "sequences.npz", **{**dict(np.load(d / "run" / "sequences.npz")),
                                                        "lengths": np.array([0, 3, 99])}), "its lengths are not"),
    (lambda d: _edit_json(d / "diagnostics.json", lambda r: r["runs"][0]["step_profile"].update(terms={"z": [1.0]})),
     "step_profile: its term 'z' is not one number"),
])
def test_a_corrupt_saved_sequence_is_refused_in_one_line(reported, tmp_path, capsys, corrupt, message):
    run, diag = reported
    copy = tmp_path / "diag"
    shutil.copytree(diag, copy)
    corrupt(copy)
    for page in ("index.html", "results.json", "report.md"):
        (copy / page).unlink()
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and len(err.splitlines()) == 1
    assert not any((copy / page).exists() for page in ("index.html", "results.json", "report.md"))
