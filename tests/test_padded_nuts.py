"""NUTS and SBC on padded sequences (Pyro's DMM as written, examples/own_sequence/dmm.py): the padded steps'
latents, which no density reads, are held fixed and left out of every comparison; a masked latent that a density
still reads is refused; SBC leaves the ranks of masked coordinates out."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
from pyro_vae.diagnostics.calibration import LEFT_OUT, check_simulable, sbc_uniformity
from pyro_vae.diagnostics.reference import nuts_reference
from pyro_vae.infer.layout import build_layout, masked_coordinates, masked_read

from test_sequence_downstream import DMM, DATA, Z, _arrays, _model


def _two_sequences():
    """Two sequences, of 3 and 6 steps (the stand-in draws lengths in 3..6: pick them)."""
    seqs = DATA.stand_in(12, seed=7, notes=10, min_len=3, max_len=6, chords=3)
    by_len = {len(s): s for s in seqs}
    return [by_len[3], by_len[6]]


def _precond(layout, loc=0.0, scale=1.0):
    return {s: (torch.full(layout.shapes[s], loc), torch.full(layout.shapes[s], scale)) for s in layout.sites}


def _nuts(pad, warmup=30, draws=30, seed=0, depth=4):
    model = _model()
    x = _arrays(_two_sequences(), pad_to=pad)
    layout = build_layout(model, x)
    settings = pv.DiagnoseSettings(points=2, nuts_chains=2, nuts_warmup=warmup, nuts_samples=draws, max_tree_depth=depth)
    pyro.set_rng_seed(seed)
    z, diverging, _, _ = nuts_reference(model, x, layout, _precond(layout), settings)
    return z.numpy(), masked_coordinates(model, x, layout)


def test_nuts_holds_padded_steps_and_draws_the_rest():
    z, masked = _nuts(6, warmup=10, draws=10, depth=3)
    # the 3-step sequence: steps 4..6 (Z numbers each) are padding, the 6-step one has none
    np.testing.assert_array_equal(masked[0], np.repeat(np.arange(1, 7), Z) > 3)
    assert not masked[1].any()
    real = z[:, :, ~masked]
    assert np.isfinite(real).all() and real.std() > 0  # drawn, not held
    assert np.isnan(z[:, :, masked]).all()  # held coordinates are no draws: absent, never numbers


class _LeakyDMM(DMM.DMM):
    """The DMM with its latents masked on padded steps but every emission observed: a padded step's z still
    feeds a density, so it cannot be held fixed."""

    def model(self, mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths, annealing_factor=1.0):
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(mini_batch.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, mini_batch.size(1) + 1)):
                z_loc, z_scale = self.trans(z_prev)
                m = mini_batch_mask[:, t - 1:t].bool()
                z_t = pyro.sample("z_%d" % t, dist.Normal(z_loc, z_scale).mask(m).to_event(1))
                pyro.sample("obs_x_%d" % t, dist.Bernoulli(self.emitter(z_t)).to_event(1), obs=mini_batch[:, t - 1, :])
                z_prev = z_t


def test_a_masked_latent_that_a_density_reads_is_found_and_refused():
    x = _arrays(_two_sequences(), pad_to=6)
    model = _model()
    assert not masked_read(model, x, build_layout(model, x))
    pyro.clear_param_store()
    torch.manual_seed(0)
    leaky = _LeakyDMM(input_dim=10, z_dim=Z, emission_dim=8, transition_dim=8, rnn_dim=8)
    assert masked_read(leaky, x, build_layout(leaky, x))
    with pytest.raises(pv.PyroVAEError, match=r"masks out latent coordinates that a density still reads.*"
                                              r"--reference none"):
        pv.diagnose([pv.Subject("leaky", leaky, x, [0, 1])],
                    pv.DiagnoseSettings(points=2, draws=20, reference="nuts", sbc_sims=0))


def test_sbc_of_a_step_by_step_observed_program_is_refused_in_one_line():
    x = _arrays(_two_sequences(), pad_to=6)
    with pytest.raises(pv.PyroVAEError, match=r"observes 5 more site\(s\) \(obs_x_2, obs_x_3, obs_x_4 \.\.\.\).*"
                                              r"--sbc-sims 0"):
        check_simulable(_model(), x, "dmm")


def test_sbc_uniformity_leaves_masked_ranks_out():
    rng = np.random.default_rng(0)
    draws = 19
    ranks = rng.integers(0, draws + 1, size=(200, 3))
    ranks[:, 1] = np.where(np.arange(200) < 80, rng.integers(0, draws + 1, 200), LEFT_OUT)
    ranks[:, 2] = LEFT_OUT
    pv_all = sbc_uniformity(ranks, draws)
    # column 1 is tested on its 80 real ranks alone: the same p as those ranks by themselves
    alone = sbc_uniformity(ranks[:80, 1:2], draws)
    np.testing.assert_allclose(pv_all[1], alone[0])
    assert np.isnan(pv_all[2]) and np.isfinite(pv_all[:2]).all()
    # had the -1s been counted as ranks, the lowest bin would hold 120 extra: far from uniform
    counted = sbc_uniformity(np.where(ranks == LEFT_OUT, 0, ranks)[:, 1:2], draws)
    assert counted[0] < 1e-6 < alone[0]


@pytest.mark.slow
def test_padding_to_t_or_2t_gives_the_same_nuts_coordinates_and_means():
    """The same two sequences padded to 6 and to 12 steps: the same real coordinates are drawn (the rest absent),
    and their NUTS means agree within Monte Carlo error (the padded steps' held values change nothing)."""
    (z6, m6), (z12, m12) = (_nuts(pad, warmup=30, draws=40, depth=3) for pad in (6, 12))
    d = 6 * Z
    np.testing.assert_array_equal(m12[:, :d], m6)
    assert m12[:, d:].all()  # steps 7..12 are padding for both sequences
    real = ~m6
    a, b = z6.reshape(-1, 2, d), z12.reshape(-1, 2, 12 * Z)[..., :d]
    assert np.isfinite(a[:, real]).all() and np.isfinite(b[:, real]).all()
    assert np.isnan(z12[..., d:]).all()
    # s.e. of a NUTS mean with a conservative effective size (a quarter of the draws: short, correlated chains)
    n_eff = a.shape[0] / 4
    se = np.sqrt((a[:, real].var(0) + b[:, real].var(0)) / n_eff)
    assert (np.abs(a[:, real].mean(0) - b[:, real].mean(0)) < 4 * se + 1e-3).all()


@pytest.mark.slow
def test_diagnose_with_nuts_on_padded_sequences_compares_real_steps_only():
    x = _arrays(_two_sequences(), pad_to=6)
    settings = pv.DiagnoseSettings(points=2, draws=20, reference="nuts", sbc_sims=0, nuts_chains=2, nuts_warmup=60,
                                   nuts_samples=20, max_tree_depth=3, local_steps=2, gaps=False)
    d = pv.diagnose([pv.Subject("dmm", _model(), x, [0, 1])], settings)
    r = d.runs[0]
    masked = np.repeat(np.arange(1, 7), Z)[None, :] > np.array([[3], [6]])
    ref = r.reference
    assert np.isnan(ref.mean[masked]).all() and np.isnan(ref.sd[masked]).all()
    assert np.isfinite(ref.mean[~masked]).all() and (ref.sd[~masked] > 0).all()
    rhat = np.asarray(ref.nuts.rhat)
    assert np.isnan(rhat[masked]).all() and (rhat[~masked] < 1.5).all() and ref.nuts.rhat_max < 1.5
    c = r.comparison
    for f in ("std_mean_error", "sd_ratio", "w2"):
        assert np.isfinite(getattr(c, f)).all()  # over the real coordinates only: a NaN column would spread


def test_trains_line_and_report_glossary_call_a_programs_chain_rows_sequences():
    from pyro_vae.app.pipeline import unit_of_test_rows
    from pyro_vae.diagnostics.results import Diagnosis
    from pyro_vae.report.render import glossary

    x = _arrays(_two_sequences(), pad_to=6)
    assert unit_of_test_rows(_model(), x) == "sequence"  # the DMM as written: no declared chain, its own z_1 .. z_6

    class Run:
        latent_labels = [f"z_{t}[{i}]" for t in range(1, 7) for i in range(Z)]

    d = Diagnosis.__new__(Diagnosis)
    d.runs = [Run()]
    words = " ".join(text for _, text in glossary(d))
    assert "per sequence" in words and "per point" not in words and "one sequence alone" in words
    Run.latent_labels = ["z[0]", "z[1]"]
    assert "per point" in " ".join(text for _, text in glossary(d))


def test_sbc_ranks_of_a_declared_chains_padded_steps_are_left_out():
    from pyro_vae.diagnostics.calibration import sbc_ranks
    from test_sequences import _model as _chain

    model = _chain(transition="gated")
    lengths = torch.tensor([6, 3])
    x = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(1))
    data = {"x": x * (torch.arange(6) < lengths[:, None]).unsqueeze(-1), "lengths": lengths}
    layout = build_layout(model, data)
    pyro.set_rng_seed(0)
    ranks = sbc_ranks(model, data, layout, 10, 9)
    # simulation i keeps row i mod 2's length: the odd ones stop after step 3, and only their later steps are out
    out = np.repeat(np.arange(1, 7), 2)[None, :] > np.where(np.arange(10) % 2, 3, 6)[:, None]
    np.testing.assert_array_equal(ranks == LEFT_OUT, out)
    assert ((ranks[~out] >= 0) & (ranks[~out] <= 9)).all()
