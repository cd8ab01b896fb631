"""Latents over time: the declared chain (models/graph/sequence.py), sequence data with lengths (data/sequences.py),
the synthetic sequence sources, and the Kalman filter / RTS smoother (diagnostics/kalman.py) it is checked against.

- padding changes nothing: the same sequences padded to T and to 2T give identical log p(x) and ELBO;
- bad sequence data fails in one line naming the problem (lengths beyond T or below 1, NaN in the real steps,
  a 2-D array where a sequence is declared), before anything is written;
- the Kalman filter's log-likelihood and the smoother's moments against a dense Gaussian computation;
- (slow) at fixed linear-Gaussian parameters the library's IS log p(x) matches the Kalman log-likelihood per
  sequence; after training the structured guide, the ELBO is within 0.5% of it and q's means within 0.1 sd of
  the smoother's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from pyro import poutine
from scipy import stats

import pyro_vae as pv
from pyro_vae.config import config_from_dict
from pyro_vae.config.schema import TrainConfig
from pyro_vae.diagnostics.kalman import LinearGaussian, kalman_smoother
from pyro_vae.diagnostics.step_means import guide_step_means
from pyro_vae.errors import PyroVAEError
from pyro_vae.models.graph.sequence import SequenceModel, reverse_within


def _spec(transition="linear", structure="structured", x_dim=3, likelihood="normal", inputs=0, rnn="gru"):
    nodes = {"z": {"dim": 2, "over": "time", "transition": {"type": transition, "hidden": [8]},
                   "rnn": {"type": rnn, "hidden": 8}, "encoder": {"hidden": [8]}},
             "x": {"role": "observed", "over": "time", "likelihood": likelihood, "parents": ["z"],
                   "net": {"hidden": []}}}
    if inputs:
        nodes["u"] = {"role": "input", "over": "time", "family": "real", "dim": inputs}
        nodes["z"]["parents"] = ["u"]
        nodes["x"]["parents"] = ["z", "u"]
    cfg = config_from_dict({"model": {"guide_structure": structure, "nodes": nodes}, "train": {"seed": 0}})
    return cfg.model


def _spec_with(**extra):
    nodes = {"z": {"dim": 2, "over": "time"}, "x": {"role": "observed", "over": "time", "parents": ["z"]}, **extra}
    return config_from_dict({"model": {"nodes": nodes}}).model


def _model(**kw):
    torch.manual_seed(0)
    return pv.build_model(_spec(**kw), 3)


def test_reverse_within_keeps_padding_and_is_its_own_inverse():
    x = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    lengths = torch.tensor([4, 2])
    r = reverse_within(x, lengths)
    assert r[0, :, 0].tolist() == [3, 2, 1, 0]
    assert r[1, :, 0].tolist() == [5, 4, 6, 7]
    assert torch.equal(reverse_within(r, lengths), x)


@pytest.mark.parametrize("kw", [{}, {"transition": "gated", "structure": "mean-field", "inputs": 1, "rnn": "lstm"}])
def test_padding_to_2T_changes_no_number(kw):
    model = _model(**kw)
    g = torch.Generator().manual_seed(1)
    n, t = 6, 7
    x = torch.randn(n, t, 3, generator=g)
    lengths = torch.tensor([7, 3, 1, 5, 7, 2])
    data = {"x": x * (torch.arange(t) < lengths[:, None]).unsqueeze(-1), "lengths": lengths}
    if kw.get("inputs"):
        data["u"] = torch.randn(n, t, 1, generator=g)
    padded = {k: (torch.cat([v, torch.full_like(v, 9.0)], dim=1) if v.dim() == 3 else v) for k, v in data.items()}
    # the same guide draws (z_t at the real steps are drawn in the same order) give identical log-weights
    w_t = _log_weights(model, data, 8)
    w_2t = _log_weights(model, padded, 8)
    assert torch.allclose(w_t, w_2t, atol=1e-4, rtol=0)
    # and the library's ELBO (its Monte Carlo s.e. is reliable, unlike an untrained guide's importance weights')
    # agrees within its s.e.
    a = pv.evaluate_points(model, data, iw_samples=None, elbo_samples=20, seed=3, prior_samples=0)
    b = pv.evaluate_points(model, padded, iw_samples=None, elbo_samples=20, seed=4, prior_samples=0)
    assert bool(((a.elbo - b.elbo).abs() <= 4 * (a.elbo_var + b.elbo_var).sqrt()).all())


def _log_weights(model, data, k):
    """(k, sequences): log p(x, z) - log q(z | x) of k guide draws, each site's masked log density summed."""
    out = []
    with torch.no_grad():
        for i in range(k):
            torch.manual_seed(i)  # the padded steps' draws come after the real ones: each draw its own seed
            gtr = poutine.trace(model.guide).get_trace(**data)
            mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(**data)
            w = 0
            for tr, sign in ((mtr, 1), (gtr, -1)):
                for site in tr.nodes.values():
                    if site["type"] == "sample" and not site["name"].startswith("data"):
                        w = w + sign * site["fn"].log_prob(site["value"])
            out.append(w)
    return torch.stack(out)


def _write(tmp_path, **arrays):
    path = tmp_path / "seqs.npz"
    np.savez(path, **arrays)
    return str(path)


def _train_cfg(path, tmp_path):
    return {"data": {"train": path, "test_fraction": 0.25},
            "model": {"nodes": {"z": {"dim": 2, "over": "time", "rnn": {"hidden": 4}, "encoder": {"hidden": [4]},
                                      "transition": {"hidden": [4]}},
                                "x": {"role": "observed", "over": "time", "likelihood": "normal",
                                      "parents": ["z"], "net": {"hidden": [4]}}}},
            "train": {"epochs": 1, "batch_size": 4}}


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(lengths=np.array([5, 9, 3, 2, 5, 5, 5, 5])), "is 9 at sequence 1, beyond the 5 steps"),
    (lambda a: a.update(lengths=np.array([5, 0, 3, 2, 5, 5, 5, 5])), "is 0 at sequence 1, below 1"),
    (lambda a: a["x"].__setitem__((2, 1, 0), np.nan), "NaN/Inf inside the real steps of 1 sequences (first at "
                                                       "sequence 2, step 1"),
    (lambda a: a.update(x=a["x"][:, :, 0]), "a 2-D array, but the model declares a sequence"),
])
def test_bad_sequences_fail_in_one_line_and_write_nothing(tmp_path, change, message):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(8, 5, 2)), "lengths": np.array([5, 4, 3, 2, 5, 5, 5, 5])}
    change(arrays)
    out = tmp_path / "run"
    with pytest.raises(PyroVAEError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        pv.train(config_from_dict(_train_cfg(_write(tmp_path, **arrays), tmp_path)), out)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_nan_in_the_padding_is_padding(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 2))
    lengths = np.array([5, 4, 3, 2, 5, 5, 5, 5])
    x[1, 4:] = np.nan
    x[3, 2:] = np.nan
    data = pv.load_data(config_from_dict(_train_cfg(_write(tmp_path, x=x, lengths=lengths), tmp_path)).data,
                        "normal", ("x",))
    assert bool(torch.isfinite(data.train["x"]).all())
    assert data.train["x"].shape[1:] == (5, 2)


def test_synthetic_sources_have_their_shapes():
    for source, width in (("synthetic_sequences", 3), ("synthetic_pendulum", 2), ("synthetic_chorales", 88)):
        cfg = config_from_dict({"data": {"source": source, "num_points": 20, "sequence_length": 9, "min_length": 4,
                                         "synthetic_dim": 3}}).data
        ds = pv.load_data(cfg, "normal", ("x",))
        assert ds.train["x"].shape == (18, 9, width)
        lengths = ds.train["lengths"]
        assert int(lengths.min()) >= 4 and int(lengths.max()) <= 9
        padded = torch.arange(9) >= lengths[:, None]
        assert float(ds.train["x"][padded].abs().sum()) == 0.0
    roll = ds.train["x"]
    assert set(roll.unique().tolist()) <= {0.0, 1.0}


def test_a_sequence_source_needs_a_model_over_time(tmp_path):
    cfg = config_from_dict({"data": {"source": "synthetic_sequences", "num_points": 20}})
    with pytest.raises(PyroVAEError, match="holds sequences .* no node of the model is over time"):
        pv.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = config_from_dict({"data": {"source": "digits"}, "model": {"nodes": _spec().nodes}})
    with pytest.raises(PyroVAEError, match="the model is over time .* holds no sequences"):
        pv.train(cfg, tmp_path / "run")


def test_graph_over_time_refuses_what_it_cannot_compile():
    bad = _spec()
    nodes = dict(bad.nodes)
    import dataclasses
    nodes["w"] = dataclasses.replace(nodes["z"], over=None, transition=type(nodes["z"].transition)())
    nodes["x"] = dataclasses.replace(nodes["x"], parents=("z", "w"))
    with pytest.raises(PyroVAEError, match="model.nodes.w: rnn is for a latent chain"):
        pv.build_model(dataclasses.replace(bad, nodes=nodes), 3)
    nodes["w"] = dataclasses.replace(nodes["w"], rnn=type(nodes["z"].rnn)())
    with pytest.raises(PyroVAEError, match="model.nodes.w: a graph with a time axis takes nodes over time only"):
        pv.build_model(dataclasses.replace(bad, nodes=nodes), 3)
    with pytest.raises(PyroVAEError, match="model.nodes.u: an input over time is a real vector per step"):
        spec = _spec_with(u={"role": "input", "over": "time", "family": "categorical", "dim": 3})
        pv.build_model(dataclasses.replace(spec, nodes={**spec.nodes, "x": dataclasses.replace(
            spec.nodes["x"], parents=("z", "u"))}), 3)
    with pytest.raises(PyroVAEError, match="exactly one latent chain .* has 2 \\(z, w\\)"):
        spec = _spec_with(w={"dim": 2, "over": "time"})
        pv.build_model(dataclasses.replace(spec, nodes={**spec.nodes, "x": dataclasses.replace(
            spec.nodes["x"], parents=("z", "w"))}), 3)
    with pytest.raises(PyroVAEError, match="'lengths' is the array of each sequence's length"):
        pv.build_model(_spec_with(lengths={"role": "input", "over": "time", "family": "real", "dim": 1}), 3)


@pytest.mark.slow
def test_sequence_model_trains_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path, x=rng.normal(size=(16, 6, 2)), lengths=rng.integers(2, 7, size=16))
    cfg = _train_cfg(path, tmp_path)
    cfg["train"]["epochs"] = 2
    cfg["evaluate"] = {"iw_samples": 10}
    run = pv.train(config_from_dict(cfg), tmp_path / "a")
    cfg["train"]["epochs"] = 1
    pv.train(config_from_dict(cfg), tmp_path / "b")
    cfg["train"]["epochs"] = 2
    resumed = pv.train(config_from_dict(cfg), tmp_path / "b", resume=True)
    assert run.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]


# -- the Kalman filter and smoother against a dense Gaussian ------------------------------------------------------


def _random_params(k=2, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    def spd(m):
        a = torch.randn(m, m, generator=g, dtype=torch.float64)
        return a @ a.T / m + 0.2 * torch.eye(m, dtype=torch.float64)
    return LinearGaussian(A=0.5 * torch.randn(k, k, generator=g, dtype=torch.float64),
                          b=torch.randn(k, generator=g, dtype=torch.float64), Q=spd(k),
                          C=torch.randn(d, k, generator=g, dtype=torch.float64),
                          d=torch.randn(d, generator=g, dtype=torch.float64), R=spd(d),
                          m1=torch.randn(k, generator=g, dtype=torch.float64), P1=spd(k))


def _dense(p: LinearGaussian, x: torch.Tensor):
    """log p(x), E[z | x] and sd[z | x] of one (T, D) sequence from the joint Gaussian of (z_1..z_T, x_1..x_T),
    built from the model's definition (the mean and covariance of every z_t, z_s pair) and conditioned densely."""
    steps, d = x.shape
    k = p.A.shape[0]
    means, covs = [p.m1], [p.P1]
    for _ in range(1, steps):
        means.append(p.A @ means[-1] + p.b)
        covs.append(p.A @ covs[-1] @ p.A.T + p.Q)
    cz = torch.zeros(steps * k, steps * k, dtype=torch.float64)
    for t in range(steps):
        for s in range(t, steps):  # Cov(z_s, z_t) = A^(s-t) Cov(z_t)
            block = torch.linalg.matrix_power(p.A, s - t) @ covs[t]
            cz[s * k:(s + 1) * k, t * k:(t + 1) * k] = block
            cz[t * k:(t + 1) * k, s * k:(s + 1) * k] = block.T
    mz = torch.cat(means)
    big_c = torch.block_diag(*([p.C] * steps))
    mx = big_c @ mz + p.d.repeat(steps)
    cx = big_c @ cz @ big_c.T + torch.block_diag(*([p.R] * steps))
    loglik = torch.distributions.MultivariateNormal(mx, cx).log_prob(x.reshape(-1))
    cross = cz @ big_c.T
    post_mean = mz + cross @ torch.linalg.solve(cx, x.reshape(-1) - mx)
    post_cov = cz - cross @ torch.linalg.solve(cx, cross.T)
    return loglik, post_mean.reshape(steps, k), post_cov.diagonal().sqrt().reshape(steps, k)


def test_kalman_matches_a_dense_gaussian_and_ignores_padding():
    p = _random_params()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 3, generator=g, dtype=torch.float64) * 2
    lengths = torch.tensor([6, 4, 1])
    padded = torch.cat([x, torch.full_like(x, 7.0)], dim=1)
    for data in (x, padded):
        res = kalman_smoother(p, data, lengths)
        for i, n in enumerate(lengths.tolist()):
            ll, mean, sd = _dense(p, x[i, :n])
            assert abs(float(res.log_likelihood[i] - ll)) < 1e-8
            assert torch.allclose(res.means[i, :n], mean, atol=1e-8)
            assert torch.allclose(res.sds[i, :n], sd, atol=1e-8)


def test_set_linear_gaussian_pins_the_chain_and_refuses_what_it_cannot_hold():
    model = _model()
    truth = {**{k: v.double() for k, v in _random_params(k=2, d=3).__dict__.items()}}
    truth.update(Q=torch.diag(torch.tensor([0.3, 0.2]) ** 2), R=torch.diag(torch.tensor([1.0, 0.5, 0.7]) ** 2),
                 z0=torch.tensor([1.0, -2.0], dtype=torch.float64))
    truth.update(P1=truth["Q"], m1=truth["A"] @ truth["z0"] + truth["b"])
    model.set_linear_gaussian(truth)
    got = LinearGaussian.from_model(model)
    assert torch.allclose(got.A, truth["A"].float().double(), atol=1e-6)
    assert torch.allclose(got.Q.diagonal().sqrt(), torch.tensor([0.3, 0.2], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(got.R.diagonal().sqrt(), torch.tensor([1.0, 0.5, 0.7], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(got.m1, truth["m1"], atol=1e-5)
    assert not any(p.requires_grad for p in model.transition.parameters()) and model.rnn.h0.requires_grad
    with pytest.raises(PyroVAEError, match="Q is diagonal"):
        model.set_linear_gaussian({**truth, "Q": truth["Q"] + 0.01})
    with pytest.raises(PyroVAEError, match="C has shape \\(2, 2\\), the chain's \\(3, 2\\)"):
        model.set_linear_gaussian({**truth, "C": torch.eye(2)})
    with pytest.raises(PyroVAEError, match="P1 must equal Q"):
        model.set_linear_gaussian({**truth, "P1": 2 * truth["Q"]})
    with pytest.raises(PyroVAEError, match="only a linear-Gaussian chain"):
        _model(transition="gated").set_linear_gaussian(truth)


def test_guide_step_means_are_exact_for_a_combiner_linear_in_z():
    """With the combiner's network silenced and its scale read off h_t alone, q's mean is W_z z_{t-1} + W_h h_t:
    E_q[z_t] follows that recursion from q's z_0 in closed form, and the antithetic pairs cancel the noise exactly."""
    model = _model()
    with torch.no_grad():
        for p in model.combiner.net[-1].parameters():  # the MLP's last layer: its output is 0
            p.zero_()
        model.combiner.skip.weight[model.z_dim:, :model.z_dim] = 0  # q's scale a function of h_t alone
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([5, 3, 1])
    data = {"x": torch.randn(3, 5, 3, generator=g) * (torch.arange(5) < lengths[:, None]).unsqueeze(-1),
            "lengths": lengths}
    got = guide_step_means(model, data, draws=50, chunk=20)
    k = model.z_dim
    w = model.combiner.skip.weight[:k].detach().double()
    with torch.no_grad():
        h = model.rnn(model.likelihood.encoder_input(data["x"]), lengths).double()
    m = model.q_z0.detach().double().expand(3, k)
    for t in range(5):
        m = m @ w[:, :k].T + h[:, t] @ w[:, k:].T
        assert torch.allclose(got.means[:, t], m, atol=1e-5), (t, got.means[:, t] - m)
    assert float(got.se.max()) < 1e-5


# -- (slow) the linear-Gaussian chain at fixed parameters against the Kalman filter -----------------------------

STEPS = 12
#: the guide's training: (epochs, Adam's step size) in turn, 270 sequences in batches of 100, one particle of the
#: path-derivative gradient ("stl": its noise vanishes as q nears the posterior, which is what a tenth of an sd needs)
GUIDE_SCHEDULE = ((100, 0.02), (1200, 0.005), (800, 0.001))


@pytest.fixture(scope="module")
def guide_at_truth():
    """The synthetic state space (300 sequences, lengths 4..12) and a linear chain pinned at its true parameters;
    only the structured guide is trained (GUIDE_SCHEDULE), so what differs from the Kalman smoother is the guide."""
    cfg = config_from_dict({
        "data": {"source": "synthetic_sequences", "num_points": 300, "sequence_length": STEPS, "min_length": 4,
                 "synthetic_dim": 3, "synthetic_noise": 1.0, "test_fraction": 0.1},
        "model": {"nodes": {"z": {"dim": 2, "over": "time", "transition": {"type": "linear"},
                                  "rnn": {"hidden": 16}, "encoder": {"hidden": [16]}},
                            "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"],
                                  "net": {"hidden": []}}}}})
    data = pv.load_data(cfg.data, "normal", ("x",))
    torch.manual_seed(0)
    model = pv.build_model(cfg.model, 3)
    model.set_linear_gaussian(data.truth)
    for seed, (epochs, lr) in enumerate(GUIDE_SCHEDULE):
        pv.fit(model, data.train, config=TrainConfig(epochs=epochs, batch_size=100, lr=lr, num_particles=1,
                                                      elbo="stl", eval_every=10 ** 6, seed=seed), progress=False)
    params = LinearGaussian.from_model(model)
    truth = LinearGaussian.from_dict(data.truth)
    for key in ("A", "b", "Q", "C", "d", "R", "m1", "P1"):  # still the truth after training the guide
        assert torch.allclose(getattr(params, key), getattr(truth, key), atol=1e-5), key
    test = data.test
    exact = kalman_smoother(truth, test["x"], test["lengths"])
    points = pv.evaluate_points(model, test, iw_samples=1000, seed=0, prior_samples=0)
    return model, test, exact, points


@pytest.mark.slow
def test_importance_sampled_log_px_matches_kalman_per_sequence(guide_at_truth):
    """IS log p(x) within 3 s.e. of the Kalman filter's per sequence, read at the 3-s.e. level over all of them:
    among n sequences a correct estimate leaves one beyond 3 s.e. with probability n * 0.27% (8% for 30), two with
    0.3%, so at most one may be, and none beyond the Bonferroni bound (3.92 s.e. for 30).  A bias shared by the
    sequences (a guide too narrow for importance sampling) shows in the mean z, an s.e. that is too small in the
    sum of z squared: both at the 0.27% level."""
    _, _, exact, points = guide_at_truth
    z = ((points.log_likelihood - exact.log_likelihood) / points.log_likelihood_var.sqrt()).numpy()
    n = len(z)
    assert int((np.abs(z) > 3).sum()) <= 1 and stats.binom.sf(1, n, 0.0027) < 0.005, z.round(2)
    assert float(np.abs(z).max()) < stats.norm.isf(0.0027 / 2 / n), z.round(2)
    assert abs(float(z.mean())) * np.sqrt(n) < 3, z.round(2)
    assert float((z ** 2).sum()) < stats.chi2.ppf(0.9973, n), z.round(2)


@pytest.mark.slow
def test_structured_guide_elbo_within_half_a_percent_of_kalman(guide_at_truth):
    _, _, exact, points = guide_at_truth
    kalman, elbo = float(exact.log_likelihood.mean()), float(points.elbo.mean())
    assert elbo <= kalman + 3 * float(points.elbo_var.sum().sqrt()) / len(points.elbo)  # a bound
    assert (kalman - elbo) / abs(kalman) < 0.005, (kalman, elbo)


@pytest.mark.slow
def test_guide_means_within_a_tenth_of_a_smoother_sd_at_every_coordinate(guide_at_truth):
    model, test, exact, _ = guide_at_truth
    q = guide_step_means(model, test, draws=2000)
    mean, se = q.means, q.se
    real = (torch.arange(STEPS) < test["lengths"][:, None]).unsqueeze(-1).expand(mean.shape)
    dev = torch.where(real, (mean - exact.means).abs() / exact.sds, torch.zeros_like(mean))
    mc = float((se / exact.sds)[real].max())
    assert mc < 0.01, f"E_q's Monte Carlo s.e. reaches {mc:.4f} smoother sd: draw more"
    worst = int(dev.argmax())
    i, t, d = np.unravel_index(worst, dev.shape)
    assert float(dev.max()) < 0.1, (f"|E_q[z_t,d] - E[z_t,d | x]| / sd reaches {float(dev.max()):.3f} (sequence {i} of "
                                    f"length {int(test['lengths'][i])}, step {t + 1}, coordinate {d}; mean "
                                    f"{float(dev[real].mean()):.3f}; E_q's MC s.e. <= {mc:.4f} sd)")


def test_a_test_file_of_other_length_is_padded_to_one_T(tmp_path):
    rng = np.random.default_rng(0)
    train = tmp_path / "train.npz"
    test = tmp_path / "test.npz"
    np.savez(train, x=rng.normal(size=(6, 5, 2)), lengths=np.array([5, 4, 3, 2, 5, 5]))
    np.savez(test, x=rng.normal(size=(3, 8, 2)))
    cfg = _train_cfg(str(train), tmp_path)
    cfg["data"] = {"train": str(train), "test": str(test)}
    data = pv.load_data(config_from_dict(cfg).data, "normal", ("x",))
    assert data.train["x"].shape == (6, 8, 2) and data.test["x"].shape == (3, 8, 2)
    assert data.train["lengths"].tolist() == [5, 4, 3, 2, 5, 5] and data.test["lengths"].tolist() == [8, 8, 8]
    assert float(data.train["x"][:, 5:].abs().sum()) == 0.0


@pytest.mark.parametrize("name, width", [("sequence_linear_gaussian", 3), ("sequence_dmm", 88),
                                         ("sequence_pendulum", 2)])
def test_sequence_examples_parse_build_and_name_their_command(name, width):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.toml"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"pyro-vae train examples/{name}.toml" in line for line in header)
    assert any("pyro-vae train --resume" in line for line in header)
    cfg = pv.load_config(path)
    model = pv.build_model(cfg.model, width)
    assert isinstance(model, SequenceModel) and model.obs_site == "x" and model.chain == "z"
    small = dataclasses.replace(cfg.data, num_points=10, sequence_length=cfg.data.min_length or 5)
    ds = pv.load_data(small, "normal", ("x",))
    model.check_data(ds.train)
    assert ds.train["x"].shape[-1] == width
    assert (LinearGaussian.from_model(model) is None) == (name != "sequence_linear_gaussian")
