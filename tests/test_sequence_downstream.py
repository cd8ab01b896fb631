"""Pyro's DMM as written (examples/own_sequence/dmm.py, its model and guide unchanged) through the program path:
arrays keep their shape, the per-step observed sites and the "z_minibatch" plate are found, padded steps count
for nothing in evaluation or diagnosis, and what cannot be diagnosed is refused in one line."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import torch.nn as nn

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.infer.layout import build_layout, masked_coordinates

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_sequence"
NOTES, Z, HIDDEN = 10, 3, 8


def _load(name: str, file: Path):
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DMM = _load("dmm_as_written_for_tests", EXAMPLE / "dmm.py")
DATA = _load("dmm_data_for_tests", EXAMPLE / "make_data.py")


def _sequences(n: int, seed: int):
    return DATA.stand_in(n, seed=seed, notes=NOTES, min_len=3, max_len=6, chords=3)


def _arrays(seqs, pad_to=None):
    return {k: torch.as_tensor(v) for k, v in DATA.dmm_arrays(seqs, pad_to=pad_to).items()}


def _model(seed: int = 0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    return DMM.DMM(input_dim=NOTES, z_dim=Z, emission_dim=HIDDEN, transition_dim=HIDDEN, rnn_dim=HIDDEN)


def test_the_stand_ins_helper_matches_pytorchs_packed_sequence():
    """The guide's pad_and_reverse on the padded reversed batch (what an .npz holds) gives, on every valid step,
    what Pyro's data loader gives: the RNN over the packed, length-sorted batch, unpacked and reversed."""
    seqs = _sequences(5, seed=1)
    a = _arrays(seqs, pad_to=9)
    model = _model()
    h0 = model.h_0.expand(1, 5, model.rnn.hidden_size).contiguous()
    padded, _ = model.rnn(a["mini_batch_reversed"], h0)
    ours = DMM.poly.pad_and_reverse(padded, a["mini_batch_seq_lengths"])
    lengths = a["mini_batch_seq_lengths"]
    packed = nn.utils.rnn.pack_padded_sequence(a["mini_batch_reversed"], lengths, batch_first=True, enforce_sorted=False)
    out, _ = model.rnn(packed, h0)
    theirs = DMM.poly.pad_and_reverse(out, lengths)  # unpacked to the longest sequence (6 steps), then reversed
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(ours[i, :n], theirs[i, :n])
        assert bool((ours[i, n:] == 0).all())


def test_named_sequence_arrays_keep_their_shape(tmp_path):
    a = DATA.dmm_arrays(_sequences(6, seed=2), pad_to=7)
    np.savez(tmp_path / "seq.npz", **a)
    cfg = pv.DataConfig(source="arrays", train=str(tmp_path / "seq.npz"), arrays=tuple(a), test_fraction=0.0)
    ds = pv.load_data(cfg)
    assert tuple(ds.train["mini_batch"].shape) == (6, 7, NOTES)  # not flattened to (6, 70)
    assert tuple(ds.train["mini_batch_mask"].shape) == (6, 7)
    assert ds.train["mini_batch_seq_lengths"].dtype == torch.int64


@pytest.mark.slow
def test_padding_changes_no_evaluation():
    """The same sequences padded to T and to 2T: the masked steps add nothing to log p(x) or the ELBO, so the
    estimates agree within their Monte Carlo standard errors (the draws differ: the padded steps draw too)."""
    seqs = _sequences(4, seed=3)
    model = _model()
    ev = [pv.evaluate_points(model, _arrays(seqs, pad_to=pad), iw_samples=100, seed=0, prior_samples=0,
                             reconstruction_error=False) for pad in (6, 12)]
    se = torch.sqrt(ev[0].log_likelihood_var + ev[1].log_likelihood_var)
    assert bool(((ev[0].log_likelihood - ev[1].log_likelihood).abs() < 4 * se + 1e-6).all())
    se_elbo = torch.sqrt(ev[0].elbo_var / ev[0].elbo_samples + ev[1].elbo_var / ev[1].elbo_samples)
    # binary notes: every log p(x) is negative, and a step adds about NOTES * log 2 nats, so 6 masked steps
    # counted by mistake would move it by tens of nats
    assert bool((ev[0].log_likelihood < 0).all())
    assert bool(((ev[0].elbo - ev[1].elbo).abs() < 5 * se_elbo + 0.5).all())


def test_masked_coordinates_are_found_per_point():
    seqs = _sequences(4, seed=4)
    a = _arrays(seqs, pad_to=7)
    model = _model()
    layout = build_layout(model, a)
    masked = masked_coordinates(model, a, layout)
    lengths = a["mini_batch_seq_lengths"].numpy()
    # the sites are z_1 ... z_7, Z numbers each: point i's steps beyond its length are masked, and only they
    steps = np.repeat(np.arange(1, 8), Z)
    assert layout.sites == [f"z_{t}" for t in range(1, 8)]
    np.testing.assert_array_equal(masked, steps[None, :] > lengths[:, None])


@pytest.mark.slow
def test_padding_changes_no_amortization_gap():
    """Diagnose on the same sequences padded to T and to 2T: the per-point q is masked as the model is, so every
    local ELBO of the 0/1 notes is negative and the gap stays put (unmasked, each padded coordinate let the local
    q widen for about 3 nats more per coordinate: 18 coordinates here)."""
    seqs = _sequences(3, seed=3)
    model = _model()
    settings = pv.DiagnoseSettings(points=3, draws=50, reference="none", sbc_sims=0, local_steps=40)
    gaps = []
    for pad in (6, 12):
        d = pv.diagnose([pv.Subject("dmm", model, _arrays(seqs, pad_to=pad), list(range(3)))], settings)
        local = d.runs[0].local
        assert (local.elbo < 0).all()
        gaps.append((local.gap, local.gap_se))
    (g1, s1), (g2, s2) = gaps
    # the DMM's guide q(z_t | z_{t-1}, x) is richer than the per-point diagonal Gaussian: a gap is measured (a
    # lower bound) only where that fit beats it, NaN elsewhere; where both paddings measure one, they agree
    both = np.isfinite(g1) & np.isfinite(g2)
    assert (np.abs(g1 - g2) < 4 * np.sqrt(s1 ** 2 + s2 ** 2) + 0.5)[both].all()


@pytest.mark.slow
def test_dmm_as_written_trains_evaluates_and_diagnoses_from_the_command_line(tmp_path):
    DATA.main(["--train", "20", "--test", "4", "--out", str(tmp_path)])  # the stand-in, 88 notes
    module = "dmm_cli_" + tmp_path.name.replace("-", "_")
    (tmp_path / f"{module}.py").write_text((EXAMPLE / "dmm.py").read_text())
    toml = (EXAMPLE / "dmm.toml").read_text().replace('"dmm:DMM"', f'"{module}:DMM"')
    (tmp_path / "dmm.toml").write_text(toml)
    run, diag = tmp_path / "run", tmp_path / "diag"
    assert main(["train", str(tmp_path / "dmm.toml"), "--out", str(run), "--quiet", "--iw-samples", "20",
                 "--set", "train.epochs=1"] + [a for k in ("z_dim", "emission_dim", "transition_dim", "rnn_dim")
                                               for a in ("--set", f"model.args.{k}=4")]) == 0
    assert main(["evaluate", str(run), "--quiet", "--iw-samples", "20"]) == 0
    assert main(["diagnose", str(run), "--out", str(diag), "--points", "2", "--draws", "20", "--reference", "none",
                 "--sbc-sims", "0", "--local-steps", "10", "--quiet"]) == 0
    d = pv.load_diagnosis(diag)
    local = d.runs[0].local
    assert (local.elbo < 0).all() and "gap not measured" in local.poorer_family
    assert np.isfinite(local.gap[local.local_better]).all() and np.isnan(local.gap[~local.local_better]).all()
    assert main(["report", str(run), "--out", str(diag), "--quiet"]) == 0
    figures = {f["file"] for f in json.loads((diag / "results.json").read_text())["figures"]}
    assert "figures/steps_run.png" in figures and not any("reconstructions" in f for f in figures)  # no padding


# -- whole sequences: the per-step profile, names, sampling and forecasts -----------------------------------------

from pyro_vae.app.sequences import chain_model, forecast  # noqa: E402
from pyro_vae.config import config_from_dict  # noqa: E402
from pyro_vae.evaluation.steps import collapse_names, collapse_terms  # noqa: E402


def test_step_runs_are_named_first_to_last():
    assert collapse_names(["z_1", "z_2", "z_3", "z_4", "y", "w_1", "w_2"]) == ["z_1..z_4", "y", "w_1", "w_2"]
    assert collapse_terms([f"log p(obs_x_{t}|mask,z_{t})" for t in (1, 2, 3)] + ["log p(y)"]) == \
        ["sum_t=1..3 log p(obs_x_t|mask,z_t)", "log p(y)"]
    assert collapse_terms(["log p(a_1|z_2)", "log p(a_2|z_3)", "log p(a_3|z_4)"]) == \
        ["log p(a_1|z_2)", "log p(a_2|z_3)", "log p(a_3|z_4)"]  # two step numbers in a term: not one step


def test_the_per_step_profile_counts_the_sequences_that_reach_each_step():
    seqs = _sequences(6, seed=6)
    a = _arrays(seqs, pad_to=8)
    ev = pv.evaluate_points(_model(), a, iw_samples=30, seed=0, prior_samples=0, reconstruction_error=False)
    prof = ev.summary()["steps"]
    lengths = np.array([len(s) for s in seqs])
    assert prof["steps"] == list(range(1, 9))
    assert prof["sequences"] == [int((lengths >= t).sum()) for t in range(1, 9)]
    assert prof["kinds"] == {"z": "latent", "obs_x": "observed"}
    for stem in ("z", "obs_x"):
        assert all((v is None) == (n == 0) for v, n in zip(prof["terms"][stem], prof["sequences"]))
    # E log p of 0/1 notes is negative at every reached step
    assert all(v < 0 for v in prof["terms"]["obs_x"] if v is not None)


def _chain_model():
    nodes = {"z": {"dim": 2, "over": "time", "transition": {"type": "linear"}, "rnn": {"hidden": 8},
                   "encoder": {"hidden": [8]}},
             "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"], "net": {"hidden": []}}}
    torch.manual_seed(0)
    return pv.build_model(config_from_dict({"model": {"nodes": nodes}}).model, 3)


def test_a_forecast_runs_the_chains_own_transition_after_the_prefix():
    """The forecast's latents step by the model's linear-Gaussian law (A, b, Q as the Kalman module reads them):
    the mean of z_{s+1} - (A z_s + b) over n draws is N(0, Q / n) noise; x_t is C z_t + d."""
    model = _chain_model()
    model.steps = 5
    lg = model.linear_gaussian()
    prefix = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    n = 400
    fitted, ahead, z = forecast(model, prefix, n, steps=6, seed=1)
    assert fitted.shape == (2, n, 5, 3) and ahead.shape == (2, n, 6, 3) and z.shape == (2, n, 6, 2)
    zt = torch.as_tensor(z, dtype=torch.float32)
    resid = zt[:, :, 1:] - (zt[:, :, :-1] @ lg["A"].T + lg["b"])
    sd = torch.sqrt(torch.diagonal(lg["Q"]) / n)
    assert bool((resid.mean(1).abs() < 4 * sd).all())
    torch.testing.assert_close(torch.as_tensor(ahead), zt @ lg["C"].T + lg["d"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sample_steps_and_given_prefix_write_sequences_and_forecasts(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "seqs.npz", x=rng.normal(size=(16, 6, 2)).astype(np.float32), lengths=rng.integers(2, 7, 16))
    cfg = {"data": {"train": str(tmp_path / "seqs.npz"), "test_fraction": 0.25},
           "model": {"nodes": {"z": {"dim": 2, "over": "time", "rnn": {"hidden": 4}, "encoder": {"hidden": [4]},
                                     "transition": {"hidden": [4]}},
                               "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"],
                                     "net": {"hidden": [4]}}}},
           "train": {"epochs": 1, "batch_size": 4}, "evaluate": {"iw_samples": 5}}
    pv.train(config_from_dict(cfg), tmp_path / "run")
    assert main(["sample", str(tmp_path / "run"), "-n", "5"]) == 2  # a chain's samples are sequences: --steps
    assert main(["sample", str(tmp_path / "run"), "-n", "5", "--steps", "9"]) == 0
    d = np.load(tmp_path / "run" / "sequences-seed0.npz")
    assert d["x"].shape == (5, 9, 2) and d["z"].shape == (5, 9, 2)
    assert (tmp_path / "run" / "sequences-seed0.png").stat().st_size > 0
    np.save(tmp_path / "prefix.npy", rng.normal(size=(4, 2)).astype(np.float32))
    assert main(["sample", str(tmp_path / "run"), "-n", "7", "--steps", "3", "--given-prefix",
                 str(tmp_path / "prefix.npy")]) == 0
    f = np.load(tmp_path / "run" / "forecast-seed0.npz")
    assert f["forecast"].shape == (1, 7, 3, 2) and f["fitted"].shape == (1, 7, 4, 2)
    bad = tmp_path / "bad.npy"
    np.save(bad, rng.normal(size=(4, 3)))
    assert main(["sample", str(tmp_path / "run"), "--given-prefix", str(bad)]) == 2  # 3 values a step, not 2
    assert not (tmp_path / "run" / "forecast-seed1.npz").exists()


def test_steps_on_a_model_without_time_is_refused_in_one_line():
    with pytest.raises(pv.PyroVAEError, match="--steps draws sequences from a declared model over time"):
        chain_model(object(), "--steps")


@pytest.mark.slow
def test_a_linear_chain_is_diagnosed_against_its_kalman_smoother():
    """Ragged sequences of a linear-Gaussian chain: the reference is the Kalman smoother (no NUTS, no refusal of the
    padded steps), and the same sequences padded to T and to 2T compare alike: padded steps are left out."""
    model = _chain_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    lengths = np.array([5, 3, 4, 2])
    out = []
    for pad in (5, 10):
        xp = np.zeros((4, pad, 3), dtype=np.float32)
        xp[:, :5] = x
        for i, n in enumerate(lengths):
            xp[i, n:] = 0.0
        data = {"x": torch.as_tensor(xp), "lengths": torch.as_tensor(lengths)}
        d = pv.diagnose([pv.Subject("lg", model, data, list(range(4)))],
                        pv.DiagnoseSettings(points=4, draws=400, sbc_sims=0, local_steps=0))
        r = d.runs[0]
        assert r.reference.method == "kalman"
        out.append(r.comparison)
    a, b = out
    # the same posterior and the same q on the real steps; only q's draws differ (400 a point)
    assert np.all(np.abs(a.std_mean_error - b.std_mean_error) < 0.15)
    assert np.all(np.abs(np.log(a.sd_ratio / b.sd_ratio)) < 0.1)
