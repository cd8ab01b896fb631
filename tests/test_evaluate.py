"""Evaluation checked against closed forms.

Oracles: probabilistic PCA (exact marginal N(mu, WW^T + s^2 I) and exact
Gaussian posterior), analytic Gaussian KL, Tipping & Bishop's maximum
likelihood solution, and a 2-D latent model integrated on a grid.  Every
statistical comparison uses a fixed seed and a tolerance of a few standard
errors that the evaluator (or the test) estimates; nothing is compared with
a hard-coded number.

Fast tests run in CI; the ones marked ``slow`` (training to convergence,
K = 5000 on 10,000 points) run with:

    python3 -m pytest -m slow tests/test_evaluate.py
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist
from torch.distributions import kl_divergence

import pyro_vae as pv
from pyro_vae.evaluation.estimators import evaluate_points
from pyro_vae.evaluation.results import ACTIVE_UNIT_THRESHOLD
from pyro_vae.evaluation.streaming import DEFAULT_BUDGET, importance_summary, plan_chunks
from pyro_vae.infer.objectives import make_objective

from one_latent import decoder, decoder_net, encoder_net, prior, q_loc_scale

CORE_KEYS = {"elbo", "reconstruction", "kl", "log_likelihood", "log_likelihood_se", "num_points"}
NEW_KEYS = {
    "elbo_se", "kl_analytic", "kl_method", "kl_mc", "kl_mc_se", "elbo_samples", "iw_samples", "iw_ess_mean",
    "iw_ess_min", "log_likelihood_prior", "log_likelihood_prior_se", "prior_samples", "prior_ess_mean",
    "prior_ess_min", "latent_dims", "latent_names", "active_units", "active_units_threshold",
    "posterior_mean_variance", "kl_per_dim", "kl_per_dim_analytic", "reconstruction_mse",
    "iw_khat_max", "iw_khat_median", "iw_khat_above_0_7", "log_likelihood_warning", "iw_khat_note",
    "elbo_between_point_se", "log_likelihood_between_point_se",
}
D64 = torch.float64


# -- hand-written models (the user-model protocol, no nn.Module, float64) ---------------------


class PPCA:
    """z ~ N(0, I_k), x | z ~ N(W z + mu, s^2 I_D), with a Gaussian guide.

    ``guide="exact"``: q(z|x) is the exact posterior N(A (x - mu), s^2 M^-1),
    M = W^T W + s^2 I, A = M^-1 W^T.  ``guide="meanfield"``: the same means
    with the variances 1 / diag(posterior precision), the best diagonal q
    under KL(q || posterior); its gap to log p(x) is a closed form.
    """

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, W, mu, s, guide="exact"):
        self.W, self.mu, self.s = W, mu, float(s)
        D, k = W.shape
        self.k = k
        M = W.T @ W + self.s**2 * torch.eye(k, dtype=W.dtype)
        self.A = torch.linalg.solve(M, W.T)
        self.post_cov = self.s**2 * torch.linalg.inv(M)
        self.post_cov = 0.5 * (self.post_cov + self.post_cov.T)
        self.mf_scale = (1.0 / torch.diagonal(torch.linalg.inv(self.post_cov))).sqrt()
        self.guide_kind = guide
        self.calls = []  # (particles x points) of every model call, to check chunking

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.k, dtype=x.dtype), 1.0).to_event(1))
            loc = z @ self.W.T + self.mu
            self.calls.append(loc.numel() // loc.shape[-1])
            pyro.sample("x", dist.Normal(loc, self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc = self.posterior_mean(x)
            if self.guide_kind == "exact":
                pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=self.post_cov))
            else:
                pyro.sample("z", dist.Normal(loc, self.mf_scale).to_event(1))

    def posterior_mean(self, x):
        return (x - self.mu) @ self.A.T

    # closed forms
    def marginal(self):
        C = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0], dtype=self.W.dtype)
        return dist.MultivariateNormal(self.mu, covariance_matrix=C)

    def sample(self, n, generator):
        z = torch.randn(n, self.k, generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.mu + self.s * torch.randn(n, self.W.shape[0], generator=generator, dtype=self.W.dtype)

    def meanfield_gap(self):
        """KL(q || p(z|x)), the same for every x: log p(x) - ELBO of the mean-field guide."""
        q = dist.MultivariateNormal(torch.zeros(self.k, dtype=D64), covariance_matrix=torch.diag(self.mf_scale**2))
        p = dist.MultivariateNormal(torch.zeros(self.k, dtype=D64), covariance_matrix=self.post_cov)
        return float(kl_divergence(q, p))


def ppca(D=5, k=2, s=0.7, seed=0, guide="exact", zero_column=None):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, k, generator=g, dtype=D64)
    if zero_column is not None:
        W[:, zero_column] = 0.0
    mu = torch.randn(D, generator=g, dtype=D64)
    return PPCA(W, mu, s, guide), g


def correlated_ppca(guide="meanfield"):
    """pPCA with strongly correlated posterior, so a diagonal guide is visibly worse than the truth."""
    W = torch.tensor([[1.0, 0.9], [0.9, 1.0], [1.0, 1.1], [1.1, 0.8]], dtype=D64)
    mu = torch.tensor([0.5, -0.3, 0.0, 1.0], dtype=D64)
    return PPCA(W, mu, 0.6, guide)


def ppca_vae_config(k):
    """A linear VAE: linear Gaussian encoder, linear decoder, one learned noise scale."""
    return pv.ModelConfig(latent_dim=k, likelihood="normal", scale="learned_isotropic",
                          encoder=pv.NetConfig(hidden=()), decoder=pv.NetConfig(hidden=()))


def small_vae(data_dim=12, latent_dim=3, likelihood="bernoulli", seed=0, prior="normal", guide="normal"):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    cfg = pv.ModelConfig(latent_dim=latent_dim, likelihood=likelihood, prior=prior, guide=guide,
                         encoder=pv.NetConfig((16,)), decoder=pv.NetConfig((16,)))
    return pv.build_model(cfg, data_dim)


def se_of_mean(t: torch.Tensor) -> float:
    return float(t.std() / math.sqrt(t.numel()))


# -- (i) exact posterior: the importance estimate is exact for every K --------------------------


@pytest.mark.parametrize("K", [1, 7, 100])
def test_exact_posterior_guide_gives_exact_log_likelihood_for_every_K(K):
    m, g = ppca()
    x = m.sample(300, g)
    r = evaluate_points(m, x, iw_samples=K, prior_samples=0, seed=1)
    exact = m.marginal().log_prob(x)
    # every weight p(x, z)/q(z|x) equals p(x): no Monte Carlo error at all
    torch.testing.assert_close(r.log_likelihood, exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(r.iw_ess, torch.full_like(exact, float(K)), rtol=1e-9, atol=0)
    # no analytic KL exists for a full-covariance q against N(0, I): the ELBO is Monte Carlo,
    # and with the exact posterior every draw of log p(x,z) - log q(z|x) is log p(x)
    assert not r.kl_analytic
    torch.testing.assert_close(r.elbo, exact, rtol=0, atol=1e-10)
    s = r.summary()
    assert s["log_likelihood"] == pytest.approx(float(exact.mean()), abs=1e-10)
    if K > 1:
        assert s["log_likelihood_se"] < 1e-6
    else:
        assert s["log_likelihood_se"] is None  # one draw cannot estimate its own error
    assert s["kl_method"] == "monte_carlo" and s["kl_per_dim"] is None  # a joint q has no per-dim KL


def test_posterior_means_active_units_and_mse_match_ppca_closed_forms():
    # latent 1 has a zero column in W: it is unused, so E_q[z_1 | x] = 0 for every x
    m, g = ppca(D=6, k=3, s=0.5, seed=3, zero_column=1)
    n = 4000
    x = m.sample(n, g)
    r = evaluate_points(m, x, iw_samples=10, prior_samples=0, seed=0)
    torch.testing.assert_close(r.posterior_mean, m.posterior_mean(x), rtol=0, atol=1e-12)
    # Cov_x(E_q[z]) = A C A^T = I - s^2 M^-1 for x from the model's own marginal
    v_true = torch.diagonal(torch.eye(3, dtype=D64) - m.post_cov)
    v_hat = r.posterior_mean_variance()
    se = v_true * math.sqrt(2.0 / (n - 1))  # sampling s.e. of a Gaussian variance
    assert v_hat[1] < 1e-20 and v_true[1] < 1e-12
    for j in (0, 2):
        assert abs(float(v_hat[j] - v_true[j])) < 4 * float(se[j])
    expect_active = (v_true > ACTIVE_UNIT_THRESHOLD).tolist()
    assert r.active_units().tolist() == expect_active == [True, False, True]
    assert r.summary()["active_units"] == 2
    # decoder mean at the encoder mean: x_hat = W A (x - mu) + mu
    x_hat = m.posterior_mean(x) @ m.W.T + m.mu
    torch.testing.assert_close(r.reconstruction_mse, ((x - x_hat) ** 2).mean(1), rtol=1e-12, atol=1e-12)


def test_naive_prior_estimator_is_consistent_in_low_dimension():
    # one latent dimension, broad likelihood: sampling from the prior works
    m, g = ppca(D=3, k=1, s=1.0, seed=5)
    x = m.sample(200, g)
    r = evaluate_points(m, x, iw_samples=10, prior_samples=20000, seed=2)
    exact = float(m.marginal().log_prob(x).mean())
    s = r.summary()
    assert s["prior_ess_mean"] > 0.1 * 20000
    assert abs(s["log_likelihood_prior"] - exact) < 4 * s["log_likelihood_prior_se"]


def test_naive_prior_estimator_collapses_in_higher_dimension():
    # ten latent dimensions, sharp likelihood: almost no prior draw lands in the posterior, while
    # the exact guide still gives the exact answer with K = 10
    m, g = ppca(D=20, k=10, s=0.2, seed=6)
    x = m.sample(50, g)
    K = 2000
    r = evaluate_points(m, x, iw_samples=10, prior_samples=K, seed=2)
    exact = m.marginal().log_prob(x)
    s = r.summary()
    assert s["prior_ess_mean"] < 0.01 * K
    # the naive estimate is biased low by far more than its (delta-method) standard error claims
    assert s["log_likelihood_prior"] < float(exact.mean()) - 10 * max(s["log_likelihood_prior_se"], 1e-3)
    torch.testing.assert_close(r.log_likelihood, exact, rtol=0, atol=1e-10)


# -- KL: analytic vs Monte Carlo; Trace_ELBO vs TraceMeanField_ELBO -------------------------------


def test_analytic_kl_matches_closed_form_and_monte_carlo_within_4_se():
    model = small_vae(data_dim=12, latent_dim=3, likelihood="bernoulli", seed=1).double()
    with torch.no_grad():  # spread the encoder so the KL is far from 0
        for p in encoder_net(model).parameters():
            p.mul_(3.0)
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((200, 12), 0.4, dtype=D64), generator=g)
    r = evaluate_points(model, x, iw_samples=2000, prior_samples=0, seed=3)
    assert r.kl_analytic and r.summary()["kl_method"] == "analytic"
    # closed form of KL(N(m, diag s^2) || N(0, I)) from the encoder's own outputs
    loc, scale = q_loc_scale(model, x)
    closed = 0.5 * (scale**2 + loc**2 - 1.0 - 2.0 * scale.log())
    torch.testing.assert_close(r.kl, closed.sum(1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r.kl_per_dim, closed, rtol=1e-10, atol=1e-10)
    s = r.summary()
    assert s["kl"] > 1.0
    # the Monte Carlo KL comes from the same K = 2000 draws per point that give log p(x)
    assert r.elbo_samples == 2000
    assert abs(s["kl"] - s["kl_mc"]) < 4 * s["kl_mc_se"]


def test_monte_carlo_kl_is_flagged_and_per_dimension_kl_sums_to_it():
    model = small_vae(data_dim=12, latent_dim=3, likelihood="bernoulli", seed=2).double()
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((100, 12), 0.4, dtype=D64), generator=g)

    def student_t_prior(shape):
        # torch has no KL(Normal || StudentT): the evaluator must fall back to Monte Carlo
        law = dist.StudentT(torch.tensor(3.0, dtype=D64), torch.zeros(3, dtype=D64), 1.0)
        return law.expand(tuple(shape) + (3,)).to_event(1)

    model.families["z"].prior = student_t_prior
    r = evaluate_points(model, x, iw_samples=500, prior_samples=0, seed=0)
    s = r.summary()
    assert not r.kl_analytic and s["kl_method"] == "monte_carlo" and s["kl_analytic"] is False
    assert s["kl"] == s["kl_mc"]
    assert not s["kl_per_dim_analytic"]
    # the per-dimension Monte Carlo KLs are the same draws split by dimension
    torch.testing.assert_close(r.kl_per_dim.sum(1), r.kl, rtol=1e-9, atol=1e-9)


def test_trace_and_meanfield_elbo_losses_agree_in_expectation_and_with_evaluate():
    model = small_vae(data_dim=10, latent_dim=4, likelihood="bernoulli", seed=3).double()
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((32, 10), 0.3, dtype=D64), generator=g)
    reps = 60
    losses = {}
    for name in ("trace", "meanfield"):
        obj = make_objective(name, num_particles=8, max_plate_nesting=1)
        vals = []
        with torch.no_grad():
            for i in range(reps):
                pyro.set_rng_seed(1000 + i)
                vals.append(obj.loss(model.model, model.guide, x))
        losses[name] = torch.tensor(vals, dtype=D64)
    t, mf = losses["trace"], losses["meanfield"]
    diff = float(t.mean() - mf.mean())
    se = math.sqrt(float(t.var() / reps + mf.var() / reps))
    assert abs(diff) < 4 * se
    # the analytic KL removes variance: TraceMeanField's loss is the less noisy of the two
    assert float(mf.var()) < float(t.var())
    # and the evaluator's per-point ELBO is the same quantity (loss = -sum of per-point ELBOs)
    s = pv.evaluate(model, x, iw_samples=2000, prior_samples=0, seed=5)
    ev_se = s["elbo_se"] * x.shape[0]
    assert abs(-s["elbo"] * x.shape[0] - float(mf.mean())) < 4 * math.hypot(ev_se, float(mf.std()) / math.sqrt(reps))


# -- IWAE ordering ----------------------------------------------------------------------------------


def test_iwae_bound_increases_with_K_and_stays_below_exact_log_likelihood():
    m = correlated_ppca("meanfield")
    g = torch.Generator().manual_seed(11)
    n = 250
    x = m.sample(n, g)
    exact = m.marginal().log_prob(x)
    gap_true = m.meanfield_gap()
    assert gap_true > 0.3  # the diagonal guide is visibly wrong: the ordering is not vacuous
    results, gaps = {}, {}
    for K in (1, 10, 100, 1000):
        r = evaluate_points(m, x, iw_samples=K, prior_samples=0, seed=K)
        results[K] = r
        gaps[K] = exact - r.log_likelihood  # per point; its mean estimates E[log p(x) - L_K]
    # K = 1 is the ELBO: its expected gap is KL(q || posterior), a closed form
    assert abs(float(gaps[1].mean()) - gap_true) < 4 * se_of_mean(gaps[1])
    # the evaluator's ELBO (analytic KL, averaged over the K = 1000 draws) has the same gap
    assert abs(float((exact - results[1000].elbo).mean()) - gap_true) < 4 * float(results[1000].summary()["elbo_se"])
    Ks = [1, 10, 100, 1000]
    for a, b in zip(Ks[:-1], Ks[1:]):
        d = gaps[a] - gaps[b]  # independent draws per point: a valid s.e. from the spread over points
        assert float(d.mean()) > -3 * se_of_mean(d), (a, b)
    assert float(gaps[1000].mean()) < gaps[1].mean() - 10 * se_of_mean(gaps[1] - gaps[1000])
    for K in Ks[1:]:
        s = results[K].summary()
        assert s["log_likelihood"] <= float(exact.mean()) + 3 * s["log_likelihood_se"], K
    # the project's IWAE training objective estimates the same bound
    obj = make_objective("iwae", num_particles=10, max_plate_nesting=1)
    reps = 20
    with torch.no_grad():
        vals = []
        for i in range(reps):
            pyro.set_rng_seed(i)
            vals.append(-float(obj.loss(m.model, m.guide, x)) / n)
    vals = torch.tensor(vals, dtype=D64)
    l10 = results[10].log_likelihood
    assert abs(float(vals.mean() - l10.mean())) < 4 * math.hypot(float(vals.std()) / math.sqrt(reps), se_of_mean(exact - l10))


# -- 2-D latent, non-linear, integrated on a grid ----------------------------------------------------


def _f(z):
    """A fixed non-linear decoder R^2 -> R^3: saturating, curved, but one-to-one (a unimodal posterior)."""
    z1, z2 = z[..., 0], z[..., 1]
    return torch.stack([2.0 * torch.tanh(z1 + 0.5 * z2), torch.tanh(1.5 * z2) + 0.3 * z1, 0.5 * z1**2 - 0.3 * z2], -1)


GRID = torch.linspace(-6.0, 6.0, 241, dtype=D64)  # spacing 0.05, several times below every posterior sd here


def _grid_points():
    zz = torch.stack(torch.meshgrid(GRID, GRID, indexing="ij"), -1).reshape(-1, 2)
    return zz, float(GRID[1] - GRID[0]) ** 2


def grid_log_joint(x, decode, log_lik, log_prior):
    """(points, grid) log p(x, z_g), the cell area and the grid.

    A Riemann sum of a smooth, rapidly decaying integrand on a uniform grid
    converges faster than any power of the spacing; with the spacing several
    times below the posterior width the quadrature error is negligible.
    """
    zz, area = _grid_points()
    return log_lik(x, decode(zz)) + log_prior(zz), area, zz


def _normal_log_lik(s):
    """(points, grid) sum_d log N(x_d | mean_gd, s^2), vectorized through one matmul."""

    def f(x, mean):
        sq = (x**2).sum(-1)[:, None] - 2 * x @ mean.T + (mean**2).sum(-1)[None, :]
        return -0.5 * sq / s**2 - x.shape[-1] * math.log(s * math.sqrt(2 * math.pi))

    return f


class Grid2D:
    """z ~ N(0, I_2), x | z ~ N(f(z), s^2 I_3).

    The guide is a Student-t with the grid posterior's mean and (inflated)
    covariance: its tails are heavier than the posterior's (which are at most
    Gaussian, from the prior), so the importance weights are bounded and the
    delta-method standard error can be trusted.
    """

    latent_sites = ("z",)
    obs_site = "x"
    s = 0.35

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(_f(z), self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc, cov = self.moments(x)
            tril = torch.linalg.cholesky(1.5 * cov)
            pyro.sample("z", dist.MultivariateStudentT(torch.tensor(5.0, dtype=x.dtype), loc, tril))

    def log_joint_grid(self, x):
        return grid_log_joint(x, _f, _normal_log_lik(self.s), lambda zz: -0.5 * (zz**2).sum(-1) - math.log(2 * math.pi))

    def moments(self, x):
        lj, area, zz = self.log_joint_grid(x)
        w = torch.softmax(lj, -1)
        loc = w @ zz
        second = torch.einsum("ng,gi,gj->nij", w, zz, zz)
        return loc, second - loc[:, :, None] * loc[:, None, :]

    def exact_log_prob(self, x):
        lj, area, _ = self.log_joint_grid(x)
        return torch.logsumexp(lj, -1) + math.log(area)


def test_2d_grid_log_likelihood_importance_estimate_approaches_it_and_elbo_stays_below():
    m = Grid2D()
    g = torch.Generator().manual_seed(4)
    n = 40
    z = torch.randn(n, 2, generator=g, dtype=D64)
    x = _f(z) + m.s * torch.randn(n, 3, generator=g, dtype=D64)
    exact = m.exact_log_prob(x)
    errs = {}
    for K in (1, 100, 3000):
        r = evaluate_points(m, x, iw_samples=K, prior_samples=0, seed=K)
        errs[K] = exact - r.log_likelihood
        if K == 3000:
            s = r.summary()
            assert abs(s["log_likelihood"] - float(exact.mean())) < 3 * s["log_likelihood_se"]
            # the ELBO (MC KL here) is below the grid value by more than its error, but the IW estimate is not
            assert s["elbo"] < float(exact.mean()) - 4 * s["elbo_se"]
            assert bool((r.elbo < exact).all())
            assert s["iw_ess_mean"] > 0.5 * K
    assert float(errs[100].abs().mean()) < float(errs[1].abs().mean())
    assert float(errs[3000].abs().mean()) < float(errs[100].abs().mean())


# -- protocol, chunking, isolation -------------------------------------------------------------------


def test_plan_chunks_bounds_memory_for_5000_draws_on_10000_points():
    for width in (5, 784, 2000, 10**7):
        k, b = plan_chunks(10_000, 5000, width, DEFAULT_BUDGET)
        assert 1 <= k <= 5000 and 1 <= b <= 10_000
        assert k * b * width <= max(DEFAULT_BUDGET, width)  # one draw of one point is the floor


def test_chunking_changes_nothing_but_the_random_draws():
    m, g = ppca(D=4, k=2, s=0.5, seed=8)
    x = m.sample(25, g)
    exact = m.marginal().log_prob(x)
    m.calls.clear()
    budget = 4 * 30  # 30 particles of one point per chunk (D = 4 is the widest tensor)
    r = evaluate_points(m, x, iw_samples=70, prior_samples=70, seed=0, budget=budget)
    assert max(m.calls) * 4 <= budget
    assert len(m.calls) > 3 * 25  # chunked over particles and over points, in both passes
    torch.testing.assert_close(r.log_likelihood, exact, rtol=0, atol=1e-10)
    mf = PPCA(m.W, m.mu, m.s, "meanfield")
    a = evaluate_points(mf, x, iw_samples=100, prior_samples=0, seed=0, budget=budget).summary()
    b = evaluate_points(mf, x, iw_samples=100, prior_samples=0, seed=0).summary()
    assert abs(a["log_likelihood"] - b["log_likelihood"]) < 4 * math.hypot(a["log_likelihood_se"], b["log_likelihood_se"])
    assert a["kl"] == pytest.approx(b["kl"], abs=1e-12)  # analytic: no randomness at all


@pytest.mark.slow
def test_5000_draws_on_10000_points_stay_within_the_budget_and_exact():
    m, g = ppca(D=4, k=2, s=0.5, seed=9)
    x = m.sample(10_000, g)
    m.calls.clear()
    budget = 2**20
    r = evaluate_points(m, x, iw_samples=5000, prior_samples=0, seed=0, budget=budget, reconstruction_error=False)
    # the widest tensor in the model is (particles, points, D); the plan keeps it within the budget
    assert max(m.calls) * 4 <= budget
    torch.testing.assert_close(r.log_likelihood, m.marginal().log_prob(x), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_peak_memory_stays_bounded_for_1000_draws_on_10000_images():
    # in a fresh process, so the high-water mark is this evaluation's alone; the prior pass is the
    # one that fragmented glibc's heaps (13 GB before the evaluator trimmed them; ~0.45 GB after)
    code = textwrap.dedent("""
        import torch, pyro, pyro_vae as pv
        from pyro_vae.evaluation.estimators import evaluate_points
        pyro.set_rng_seed(0)
        spec = pv.ModelConfig(latent_dim=20, likelihood="bernoulli",
                              encoder=pv.NetConfig((400,)), decoder=pv.NetConfig((400,)))
        model = pv.build_model(spec, 784)
        x = torch.bernoulli(torch.full((10000, 784), 0.3), generator=torch.Generator().manual_seed(0))
        r = evaluate_points(model, x, iw_samples=None, prior_samples=1000, reconstruction_error=False)
        assert r.log_likelihood_prior.shape == (10000,)
        # VmHWM is this process's own peak; ru_maxrss would count the forking parent's (pytest's) RSS too
        print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024)
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_mib = float(out.stdout.split()[-1])
    # interpreter + torch + pyro ~ 0.25 GB, data 31 MB, one chunk's tensors ~ 0.1 GB
    assert peak_mib < 1024


def test_user_model_with_param_store_and_point_mass_guide():
    class DeltaAE:
        latent_sites = ("z",)
        obs_site = "x"

        def model(self, x):
            W = pyro.param("W", lambda: torch.randn(6, 2, dtype=D64))
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ W.T, 0.5).to_event(1), obs=x)
                pyro.factor("penalty", -(z**2).sum(-1))  # a regularizer, not a density: left out

        def guide(self, x):
            V = pyro.param("V", lambda: torch.randn(2, 6, dtype=D64))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Delta(x @ V.T).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    m = DeltaAE()
    x = torch.randn(30, 6, dtype=D64)
    r = evaluate_points(m, x, iw_samples=100, prior_samples=300, seed=0)
    W, V = pyro.param("W").detach(), pyro.param("V").detach()
    z = x @ V.T
    log_lik = dist.Normal(z @ W.T, 0.5).log_prob(x).sum(-1)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    # a point mass: the ELBO is the MAP objective log p(x|z) + log p(z), exactly, without the factor
    torch.testing.assert_close(r.elbo, log_lik + log_prior, rtol=1e-12, atol=1e-12)
    s = r.summary()
    assert s["log_likelihood"] is None and s["iw_samples"] == 0 and s["kl_method"] == "point_mass"
    assert s["elbo_se"] == 0.0
    assert s["log_likelihood_prior"] is not None and s["prior_samples"] == 300  # the only log p(x) it has
    torch.testing.assert_close(r.posterior_mean, z)
    json.dumps(s, allow_nan=False)


def test_bad_arguments_are_one_line_errors():
    m, g = ppca()
    x = m.sample(5, g)
    for kwargs, word in (({"iw_samples": 0}, "iw_samples"), ({"prior_samples": -1}, "prior_samples"),
                         ({"budget": 0}, "budget"), ({"elbo_samples": 0}, "elbo_samples")):
        with pytest.raises(pv.PyroVAEError, match=word) as e:
            evaluate_points(m, x, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(pv.PyroVAEError, match="non-empty"):
        evaluate_points(m, x[:0])
    with pytest.raises(pv.PyroVAEError, match="fails on the evaluation data"):
        evaluate_points(m, torch.randn(5, 3, dtype=D64))

    class NoPlate(PPCA):
        def model(self, x):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2, dtype=D64), 1.0).to_event(2))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.s).to_event(2), obs=x)

        def guide(self, x):
            pyro.sample("z", dist.Normal(self.posterior_mean(x), 1.0).to_event(2))

    with pytest.raises(pv.PyroVAEError, match="plate named 'data'"):
        evaluate_points(NoPlate(m.W, m.mu, m.s), x)
    with pytest.raises(pv.PyroVAEError, match="not a latent-variable model"):
        evaluate_points(object(), x)


def test_importance_summary_matches_direct_formulas():
    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(500, 7, generator=g, dtype=D64) * 2 - 30
    est, var, ess = importance_summary(log_w)
    w = log_w.exp()
    torch.testing.assert_close(est, w.mean(0).log())
    torch.testing.assert_close(ess, w.sum(0) ** 2 / (w**2).sum(0))
    # delta method: Var[log mean w] ~ Var[w] / (K mean(w)^2), Var with 1/K
    torch.testing.assert_close(var, w.var(0, unbiased=False) / (500 * w.mean(0) ** 2))
    assert torch.isnan(importance_summary(log_w[:1])[1]).all()


def _snapshot(trainer):
    return copy.deepcopy({
        "params": [p.detach().clone() for p in trainer.params],
        "optimizer": trainer.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "data_rng": trainer.state.data_rng.get_state(),
        "modes": [m.training for m in trainer.model.modules()],
        "store": {k: v.detach().clone() for k, v in pyro.get_param_store().items()},
    })


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same(u, v)
    else:
        assert a == b


def test_evaluation_changes_no_parameters_optimizer_state_or_training_rng_stream():
    g = torch.Generator().manual_seed(0)
    x_train = torch.bernoulli(torch.full((256, 12), 0.3), generator=g)
    x_test = torch.bernoulli(torch.full((64, 12), 0.3), generator=g)
    cfg = pv.TrainConfig(epochs=1, batch_size=32, device="cpu", seed=0)

    def train(evaluate_in_between):
        model = small_vae(data_dim=12, latent_dim=3, seed=0)
        trainer = pv.Trainer(model, cfg, progress=False)
        trainer.fit(x_train, x_test)
        if evaluate_in_between:
            model.train()  # as it is mid-training
            before = _snapshot(trainer)
            pv.evaluate(model, x_test, iw_samples=30, prior_samples=30, seed=123)
            evaluate_points(model, x_test, iw_samples=5, seed=7, keep_log_weights=True)
            _assert_same(before, _snapshot(trainer))
        trainer.config = dataclasses.replace(cfg, epochs=2)
        trainer.fit(x_train, x_test)
        return _snapshot(trainer), trainer.state.history

    with_eval, hist_a = train(True)
    without, hist_b = train(False)
    _assert_same(with_eval, without)  # bit-identical training, evaluation or not

    def drop_time(hist):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in hist]

    assert drop_time(hist_a) == drop_time(hist_b)


def test_batchnorm_statistics_and_train_mode_survive_evaluation():
    class BNModel(nn.Module):
        latent_sites = ("z",)
        obs_site = "x"

        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 4))
            self.dec = nn.Linear(2, 5)

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.enc(x).split(2, -1)
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    torch.manual_seed(0)
    m = BNModel()
    x = torch.randn(50, 5) * 3 + 1
    m.train()
    stats = copy.deepcopy(m.state_dict())
    a = pv.evaluate(m, x, iw_samples=20, prior_samples=0)
    assert m.training and all(mod.training for mod in m.modules())
    _assert_same(stats, m.state_dict())
    m.eval()  # the evaluator already evaluated in eval mode: same numbers
    b = pv.evaluate(m, x, iw_samples=20, prior_samples=0)
    assert {k: v for k, v in a.items() if k != "seconds_evaluate"} == {k: v for k, v in b.items() if k != "seconds_evaluate"}


# -- the CLI and metrics.json -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = pv.config_from_dict({
        "data": {"source": "digits"},
        "model": {"latent_dim": 3, "likelihood": "bernoulli", "encoder": {"hidden": [16]}, "decoder": {"hidden": [16]}},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
    })
    pv.train(cfg, out, iw_samples=20, progress=False, plots=False)
    return out


def test_cli_json_is_exactly_one_object_with_the_metrics_json_keys(tiny_run, capsys):
    from pyro_vae.cli import main

    assert main(["evaluate", str(tiny_run), "--json", "--iw-samples", "20", "--prior-samples", "10"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out)  # fails on any extra text
    assert out.strip().count("\n") == 0 and isinstance(metrics, dict)
    assert CORE_KEYS | NEW_KEYS <= metrics.keys()
    assert metrics["iw_samples"] == 20 and metrics["prior_samples"] == 10
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics.keys() <= saved.keys()
    assert saved["iw_samples"] == 20


def test_cli_text_per_point_csv_and_errors(tiny_run, tmp_path, capsys):
    from pyro_vae.cli import main

    csv_path = tmp_path / "points.csv"
    assert main(["evaluate", str(tiny_run), "--iw-samples", "10", "--per-point", str(csv_path)]) == 0
    text = capsys.readouterr().out
    for phrase in ("test ELBO", "log p(x) (importance sampled)", "naive", "active units", "MSE", "analytic"):
        assert phrase in text, phrase
    # K = 10 leaves PSIS no tail to fit: no k-hat is shown, the s.e. is not vouched for, and the table says what to do
    assert "PSIS k-hat" not in text
    assert "WARNING: K = 10 importance draws are too few" in text and "raise iw_samples" in text
    rows = list(csv.DictReader(csv_path.open()))
    n = pv.load_run(tiny_run).metrics["num_points"]
    assert len(rows) == n and {"elbo", "log_likelihood", "iw_ess", "iw_khat", "log_likelihood_prior"} <= rows[0].keys()
    assert main(["evaluate", str(tiny_run), "--iw-samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "iw_samples" in err or "iw-samples" in err
    assert err.strip().count("\n") == 0
    assert main(["evaluate", str(tiny_run), "--per-point", str(tmp_path / "x.txt")]) == 2
    assert ".csv" in capsys.readouterr().err


# -- slow: training to the Tipping & Bishop solution; a trained VAE against a grid ----------------------


def _tipping_bishop(S, k):
    """ML pPCA for sample covariance S: (sigma^2, eigenvalues of W^T W, max mean log-likelihood)."""
    lam = torch.linalg.eigvalsh(S).flip(0)
    D = S.shape[0]
    s2 = float(lam[k:].mean())
    wtw = lam[:k] - s2
    C_logdet = float(torch.log(lam[:k]).sum()) + (D - k) * math.log(s2)
    # at the optimum tr(C^-1 S) = D
    ll = -0.5 * (D * math.log(2 * math.pi) + C_logdet + D)
    return s2, wtw, ll


def _learned_ppca(model):
    W = decoder_net(model)[-1].weight.detach().double()
    b = decoder_net(model)[-1].bias.detach().double()
    lik = model.likelihood
    s = float(nn.functional.softplus(lik.raw_scale.detach().double()) + 1e-3)
    return PPCA(W, b, s)


@pytest.mark.slow
def test_linear_vae_reaches_tipping_bishop_ml_and_its_log_likelihood_estimate_is_exact():
    D, k = 6, 2
    g = torch.Generator().manual_seed(0)
    W0 = torch.tensor([[2.0, 0.0], [1.0, 1.5], [0.5, -1.0], [-1.0, 0.5], [0.0, 1.0], [1.5, 0.5]])
    truth = PPCA(W0.double(), torch.linspace(-1, 1, D, dtype=D64), 0.5)
    x_train = truth.sample(5000, g).float()
    x_test = truth.sample(1000, g).float()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = pv.build_model(ppca_vae_config(k), D)
    trainer = pv.Trainer(model, pv.TrainConfig(elbo="meanfield", epochs=400, batch_size=250, lr=1e-2,
                                               device="cpu", seed=0, eval_every=1000), progress=False)
    trainer.fit(x_train)
    trainer.optimizer.param_groups[0]["lr"] = 1e-3  # anneal: SGD noise decides the last digits
    trainer.config = dataclasses.replace(trainer.config, epochs=600)
    trainer.fit(x_train)
    xt = x_train.double()
    S = torch.cov(xt.T, correction=0)
    s2_ml, wtw_ml, ll_ml = _tipping_bishop(S, k)
    learned = _learned_ppca(model)
    ll = float(learned.marginal().log_prob(xt).mean())
    # the ML value is a maximum, so the learned log-likelihood can only fall short of it; allowed
    # shortfall 0.005 nats per point, five times below the sampling s.e. of a mean log-likelihood
    # over these 5000 points (~0.025), i.e. no data set of this size could tell the two apart
    assert ll <= ll_ml + 1e-9
    assert ll_ml - ll < 5e-3
    assert learned.s**2 == pytest.approx(s2_ml, rel=0.03)
    wtw = torch.linalg.eigvalsh(learned.W.T @ learned.W).flip(0)
    torch.testing.assert_close(wtw, wtw_ml, rtol=0.03, atol=0.0)
    # (iii) importance-sampled test log p(x), evaluated in float64, against the exact value of the learned parameters
    r = pv.evaluate(model.double(), x_test.double(), iw_samples=1000, prior_samples=0, seed=0)
    exact = float(learned.marginal().log_prob(x_test.double()).mean())
    assert abs(r["log_likelihood"] - exact) < 3 * r["log_likelihood_se"]
    assert r["elbo"] <= exact + 3 * r["elbo_se"]


@pytest.mark.slow
def test_trained_2d_vae_importance_estimate_matches_grid():
    cfg = pv.config_from_dict({
        "data": {"source": "synthetic", "num_points": 3000, "synthetic_dim": 8, "synthetic_latent_dim": 2,
                 "synthetic_noise": 0.3},
        "model": {"latent_dim": 2, "likelihood": "normal", "scale": 0.3,
                  "encoder": {"hidden": [64], "activation": "tanh"}, "decoder": {"hidden": [64], "activation": "tanh"}},
        "train": {"epochs": 60, "batch_size": 100, "lr": 3e-3, "device": "cpu", "eval_every": 1000},
    })
    run = pv.train(cfg, None, iw_samples=10, progress=False, plots=False)
    model = run.model.double()
    x = run.data.test[:60].double()

    def grid_value(points):
        # the built-in model's own decoder, likelihood and prior modules, summed over a uniform grid
        grid = torch.linspace(-6.0, 6.0, points, dtype=D64)
        zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            mean, log_prior = decoder(model)(zz), prior(model).log_prob(zz)
            lj = torch.stack([model.likelihood(mean).log_prob(xi) + log_prior for xi in x])
        return torch.logsumexp(lj, -1) + 2 * math.log(float(grid[1] - grid[0]))

    exact, coarse = grid_value(961), grid_value(481)
    # the quadrature has converged: halving the spacing (0.025 -> 0.0125) moves no point's value
    torch.testing.assert_close(coarse, exact, rtol=0, atol=1e-6)
    r = evaluate_points(model, x, iw_samples=5000, prior_samples=0, seed=0)
    s = r.summary()
    assert abs(s["log_likelihood"] - float(exact.mean())) < 3 * s["log_likelihood_se"]
    # the ELBO is below the grid value, clearly; the importance estimate has closed most of that gap
    gap = float(exact.mean()) - s["elbo"]
    assert gap > 4 * s["elbo_se"]
    assert abs(s["log_likelihood"] - float(exact.mean())) < 0.1 * gap
