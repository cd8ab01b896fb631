"""A chain's report (report/figures.py, diagnostics/sequences.py): diagnose saves each diagnosed sequence's length
and fit, and `pyro-vae report` draws observed against reconstructed traces, q's latent trajectories against the
Kalman smoother's, and the per-step KL profile, never at padded steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.cli import main
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
