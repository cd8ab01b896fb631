"""Posterior diagnostics and reports, checked against closed forms.

The oracle is probabilistic PCA: z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I).  Its
posterior is Gaussian with precision L = I + W^T W / s^2 and mean
L^{-1} W^T (x - b) / s^2, and the best diagonal-Gaussian q (the ELBO optimum
of the normal encoder) has the same mean and variances 1 / L_jj.  The built-in
VAE with linear encoder and decoder *is* this model, so a "well-trained"
amortized guide is the closed-form optimum, installed in the weights (SGD would
only approach it, slowly, along the flat rotation of W).  The poor guide is the
same encoder with its scale divided by 4, written as a hand-made protocol model
(not a PyroModule) so the diagnostics are seen to work on user models.

Tolerances: Monte Carlo quantities get 4 of their standard errors (reported by
the diagnostics, or from the estimator's sampling distribution simulated from
the exact Gaussians); the grid's error is its cell size, far below 1e-3 sd.
"""

from __future__ import annotations

import base64
import html.parser
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import pyro
import pyro.distributions as dist

from pyro_vae import (DiagnoseSettings, PyroVAEError, Subject, build_model, config_from_dict, diagnose,
                      load_diagnosis, write_report)
from pyro_vae.cli import main
from pyro_vae.diagnostics.run import check_reference_possible
from pyro_vae.infer.psis import KHAT_BAD, KHAT_GOOD
from pyro_vae import arviz_compat
from pyro_vae.diagnostics.arviz_io import group
from pyro_vae.diagnostics.loo_check import KHAT_TOLERANCE as LOO_KHAT_TOLERANCE, LOG_PX_Z, is_log_px
from pyro_vae.report.tables import build_tables, fmt

from one_latent import decoder_net, encoder_net, q_loc_scale

D, SIGMA, NARROW = 6, 0.5, 0.25
POINTS = 6
FAST = dict(points=POINTS, reference="grid", draws=1000, local_steps=100, local_lr=0.08, sbc_sims=100, seed=0)


# ---------------------------------------------------------------------------
# the closed-form model


def _linear(module) -> torch.nn.Linear:
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 1, "the PPCA oracle needs a single linear layer"
    return layers[0]


class PPCA:
    """Parameters, posterior and ELBOs of probabilistic PCA in closed form."""

    def __init__(self, seed=0):
        g = np.random.default_rng(seed)
        # columns of lengths 2 and 1 at 68 degrees: the exact posterior has correlation
        # about -0.3, so the diagonal q is good but not exact.  In q-whitened coordinates
        # the posterior's largest variance is 1 / (1 - |rho|), so the weights' Pareto
        # tail index is about |rho|: k-hat ~ 0.3, below 0.5 but not zero.
        u, _ = np.linalg.qr(g.normal(size=(D, 2)))
        angle = np.deg2rad(68)
        self.W = np.stack([2.0 * u[:, 0], np.cos(angle) * u[:, 0] + np.sin(angle) * u[:, 1]], 1)
        self.b = g.normal(size=D)
        self.L = np.eye(2) + self.W.T @ self.W / SIGMA**2
        self.S = np.linalg.inv(self.L)
        self.rho = self.S[0, 1] / math.sqrt(self.S[0, 0] * self.S[1, 1])
        assert 0.2 < abs(self.rho) < 0.4
        self.mf_sd = 1 / np.sqrt(np.diag(self.L))
        z = g.normal(size=(POINTS, 2))
        self.x = z @ self.W.T + self.b + SIGMA * g.normal(size=(POINTS, D))

    def post_mean(self, x):
        return (x - self.b) @ self.W @ self.S.T / SIGMA**2

    def elbo(self, x, m, s):
        """ELBO of q = N(m, diag s^2) per point, exactly."""
        resid = ((x - self.b - m @ self.W.T) ** 2).sum(1) + (s**2 * (self.W**2).sum(0)).sum(-1)
        rec = -0.5 * D * math.log(2 * math.pi * SIGMA**2) - resid / (2 * SIGMA**2)
        kl = 0.5 * (s**2 + m**2 - 1 - 2 * np.log(s)).sum(1)
        return rec - kl

    def build(self, guide="normal"):
        cfg = config_from_dict({"model": {"latent_dim": 2, "likelihood": "normal", "scale": SIGMA, "guide": guide,
                                          "encoder": {"hidden": []}, "decoder": {"hidden": []}}})
        model = build_model(cfg.model, D)
        with torch.no_grad():
            dec = _linear(decoder_net(model))
            dec.weight.copy_(torch.tensor(self.W))
            dec.bias.copy_(torch.tensor(self.b))
            enc = _linear(encoder_net(model))
            a = self.S @ self.W.T / SIGMA**2  # posterior mean = a x - a b
            enc.weight.zero_()
            enc.weight[:2] = torch.tensor(a)
            enc.bias.zero_()
            enc.bias[:2] = torch.tensor(-a @ self.b)
        if guide == "normal":
            with torch.no_grad():  # the scale's bias: softplus^-1 of the target, then the encoder's floor corrected
                x0 = torch.tensor(self.x[:1], dtype=torch.float32)
                raw_target = torch.tensor(self.mf_sd)
                enc.bias[2:] = torch.log(torch.expm1(raw_target))
                off = q_loc_scale(model, x0)[1][0].double() - raw_target
                enc.bias[2:] = torch.log(torch.expm1(raw_target - off))
        model.eval()
        x = torch.tensor(self.x, dtype=torch.float32)
        with torch.no_grad():
            loc, scale = q_loc_scale(model, x)
        loc = loc.double().numpy()
        assert np.abs(loc - self.post_mean(self.x)).max() < 1e-4
        if scale is not None:
            assert np.abs(scale.double().numpy() - self.mf_sd).max() < 1e-5
        return model


class NarrowGuide:
    """A hand-written protocol model: the VAE's model, its encoder's scale divided by 4."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, vae, factor=NARROW):
        self.vae, self.factor = vae, factor

    def model(self, x):
        return self.vae.model(x)

    def guide(self, x):
        loc, scale = q_loc_scale(self.vae, x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale * self.factor).to_event(1))


@pytest.fixture(scope="module")
def ppca():
    return PPCA()


@pytest.fixture(scope="module")
def subjects(ppca):
    good = ppca.build()
    x = torch.tensor(ppca.x, dtype=torch.float32)
    idx = list(range(POINTS))
    return [Subject("good", good, x, idx, info={"objective": "closed form", "guide": "normal"}),
            Subject("narrow", NarrowGuide(good), x, idx, info={"objective": "closed form", "guide": "normal / 4"})]


@pytest.fixture(scope="module")
def diagnosis(subjects):
    return diagnose(subjects, DiagnoseSettings(**FAST), progress=False)


def _run(diagnosis, name):
    return next(r for r in diagnosis.runs if r.name == name)


# ---------------------------------------------------------------------------
# the reference and the numbers


def _khat_theory(ppca, factor):
    """Pareto shape of p(z|x) / q(z|x) for q = N(mean, diag(factor * mf_sd)^2): 1 - lambda_min(Sq^1/2 L Sq^1/2)."""
    sq = np.diag(factor * ppca.mf_sd)
    return 1 - np.linalg.eigvalsh(sq @ ppca.L @ sq).min()


def _simulated_kl_w2(ppca, draws, ref_draws, reps=200, seed=11):
    """Mean and sd of the per-point KL and W2 estimators, from draws of the exact q and posterior (whitened)."""
    g = np.random.default_rng(seed)
    chol = np.linalg.cholesky(ppca.S)
    u = (np.arange(200) + 0.5) / 200
    kl, w2 = [], []
    for _ in range(reps):
        zq = g.normal(size=(draws, 2)) * ppca.mf_sd
        zr = g.normal(size=(ref_draws, 2)) @ chol.T
        m, c = zq.mean(0), np.cov(zq.T)
        kl.append(0.5 * (np.trace(ppca.L @ c) + m @ ppca.L @ m - 2 + np.log(np.linalg.det(ppca.S) / np.linalg.det(c))))
        w2.append(np.sqrt(((np.quantile(zq, u, axis=0) - np.quantile(zr, u, axis=0)) ** 2).mean(0)).mean())
    return (np.mean(kl), np.std(kl, ddof=1)), (np.mean(w2), np.std(w2, ddof=1))


def test_grid_reference_is_the_exact_posterior(diagnosis, ppca):
    ref = _run(diagnosis, "good").reference
    assert ref.method == "grid"
    sd = np.sqrt(np.diag(ppca.S))
    assert np.abs((ref.mean - ppca.post_mean(ppca.x)) / sd).max() < 1e-3
    assert np.abs(ref.sd / sd - 1).max() < 2e-3
    assert ref.edge_mass < 1e-6  # the fine grid holds the whole posterior


def test_good_guide_small_errors_and_small_khat(diagnosis, ppca):
    r = _run(diagnosis, "good")
    k = r.khat.values
    assert k.shape == (POINTS,)
    assert _khat_theory(ppca, 1.0) < KHAT_GOOD
    assert (k < KHAT_GOOD).mean() >= 2 / 3, k
    c = r.comparison
    sd = np.sqrt(np.diag(ppca.S))
    ratio = ppca.mf_sd / sd  # the best diagonal q is this much narrower, exactly
    draws = FAST["draws"]
    # q's mean is the exact mean: only Monte Carlo error, <= 4 s.e. per dimension
    assert np.all(c.std_mean_error < 4 * ratio.max() / math.sqrt(draws))
    expect = float(np.exp(np.log(ratio).mean()))
    assert np.allclose(c.sd_ratio, expect, rtol=4 / math.sqrt(2 * draws))
    # KL(q || posterior) for Gaussians, and W2 per dim = |sd_q - sd| when the means agree
    kl = 0.5 * (np.trace(ppca.L @ np.diag(ppca.mf_sd**2)) - 2 + np.log(np.linalg.det(ppca.S))
                - np.log(np.prod(ppca.mf_sd**2)))
    ref_draws = group(r.reference_data, "posterior")["z"].shape[1]
    (kl_mean, kl_sd), (w2_mean, w2_sd) = _simulated_kl_w2(ppca, draws, ref_draws)
    # the estimators' bias (finite draws) is part of what is simulated; their means sit at the closed forms
    assert abs(kl_mean - kl) < 2 * 3 / (4 * draws) + 4 * kl_sd / math.sqrt(200)  # bias about d(d+1)/(4n), d = 2
    assert abs(w2_mean - np.abs(ppca.mf_sd - sd).mean()) < 4 * w2_sd
    assert np.all(np.abs(c.kl_gauss - kl_mean) < 4 * kl_sd), (c.kl_gauss, kl_mean, kl_sd)
    assert np.all(np.abs(c.w2 - w2_mean) < 4 * w2_sd), (c.w2, w2_mean, w2_sd)
    assert not any("good" in w for w in diagnosis.warnings)


def test_elbos_and_amortization_gap_match_closed_form(diagnosis, ppca):
    m = ppca.post_mean(ppca.x)
    best = ppca.elbo(ppca.x, m, np.tile(ppca.mf_sd, (POINTS, 1)))  # the diagonal-Gaussian optimum
    narrow = ppca.elbo(ppca.x, m, np.tile(NARROW * ppca.mf_sd, (POINTS, 1)))
    for name, exact in (("good", best), ("narrow", narrow)):
        r = _run(diagnosis, name)
        assert np.all(np.abs(r.q.elbo - exact) < 4 * r.q.elbo_se), name
        # the per-point q reaches the optimum (it can never beat it)
        assert np.all(np.abs(r.local.elbo - best) < 4 * r.local.elbo_se), name
    good, narrow_run = _run(diagnosis, "good"), _run(diagnosis, "narrow")
    gap_good, gap_narrow = good.local.gap, narrow_run.local.gap
    assert np.abs(gap_good).max() < 0.02  # q is already optimal: nothing to gain
    # nor can a per-point fit beat the optimum, nor (converged, scored on fresh draws) fall short of it
    assert np.all(np.abs(gap_good) < 4 * good.local.gap_se)
    assert np.allclose(gap_narrow, best - narrow, atol=0.05)
    s = narrow_run.summary  # the mean gap, at its own standard error
    assert abs(s.gap - np.mean(best - narrow)) < 4 * s.gap_se


def test_narrow_guide_is_flagged(diagnosis, ppca):
    r = _run(diagnosis, "narrow")
    k = r.khat.values
    assert _khat_theory(ppca, NARROW) > KHAT_BAD  # about 0.96: every point's weights are heavy-tailed
    assert r.khat.bad == POINTS, k
    # the worst points are named, worst first
    worst = r.summary.worst
    assert [w.point for w in worst] == [int(i) for i in np.argsort(-k)[: len(worst)]]
    assert worst[0].khat == k.max()
    expect = NARROW * float(np.exp(np.log(ppca.mf_sd / np.sqrt(np.diag(ppca.S))).mean()))
    assert r.summary.sd_ratio == pytest.approx(expect, rel=4 / math.sqrt(2 * FAST["draws"]))
    text = " ".join(diagnosis.warnings)
    assert "narrow: POOR POSTERIOR" in text and f"k-hat > {KHAT_BAD}" in text
    assert "overconfident" in text


def test_sbc_calibrated_for_the_good_guide_not_the_narrow_one(diagnosis):
    good = _run(diagnosis, "good").sbc
    narrow = _run(diagnosis, "narrow").sbc
    assert good.ranks.shape == (FAST["sbc_sims"], 2) and good.ranks.min() >= 0 and good.ranks.max() <= good.draws
    assert good.flagged == []
    assert narrow.flagged == ["z[0]", "z[1]"]
    # too narrow: the true z falls outside all draws far more often than 2 / (draws + 1)
    r = narrow.ranks
    assert ((r == 0) | (r == narrow.draws)).mean() > 0.3


def test_log_weights_are_the_closed_form_densities(diagnosis, ppca):
    """log p(x, z) and log q(z|x) of the saved draws against the PPCA densities in float64."""
    ss = group(_run(diagnosis, "good").q_data, "sample_stats")
    z = group(_run(diagnosis, "good").q_data, "posterior")["z"].values[0]  # (draws, point, 2)
    x = ppca.x[None]
    log_prior = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
    resid = x - ppca.b - z @ ppca.W.T
    log_lik = -0.5 * (resid**2).sum(-1) / SIGMA**2 - 0.5 * D * math.log(2 * math.pi * SIGMA**2)
    u = (z - ppca.post_mean(ppca.x)) / ppca.mf_sd
    log_q = -0.5 * (u**2).sum(-1) - np.log(ppca.mf_sd).sum() - math.log(2 * math.pi)
    # the model computes in float32: a few ulps of values near 10 nats
    assert np.allclose(ss["log_p"].values[0], log_prior + log_lik, atol=1e-3)
    assert np.allclose(ss["log_q"].values[0], log_q, atol=1e-3)
    assert np.allclose(ss["log_weight"].values[0], log_prior + log_lik - log_q, atol=2e-3)


def _log_px_exact(ppca):
    """log p(x) of probabilistic PCA in closed form: x ~ N(b, W W^T + s^2 I)."""
    cov = ppca.W @ ppca.W.T + SIGMA**2 * np.eye(D)
    r = ppca.x - ppca.b
    return -0.5 * (D * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + (r @ np.linalg.inv(cov) * r).sum(1))


def test_importance_sampled_log_px_is_the_closed_form(diagnosis, ppca):
    """The log p(x) estimate the ArviZ check compares with: log mean w of q's saved draws, at 4 of its s.e."""
    r = _run(diagnosis, "good")
    log_w = group(r.q_data, "sample_stats")["log_weight"].values[0]
    est, se = is_log_px(log_w)
    assert np.all(np.abs(est - _log_px_exact(ppca)) < 4 * se), (est, _log_px_exact(ppca), se)


@pytest.mark.skipif(not arviz_compat.has_loo_approximate_posterior(),
                    reason="loo_approximate_posterior needs ArviZ >= 1.0 (Python >= 3.12: ci/py312.sh)")
def test_khat_and_log_px_agree_with_arviz_loo_approximate_posterior(diagnosis, ppca):
    """On the same draws ArviZ's PSIS-LOO for variational posteriors gives our k-hat (the same fit: to float
    rounding) and a smoothed log p(x) within LOG_PX_Z s.e. of ours, for the good q and the narrow one alike."""
    good, narrow = _run(diagnosis, "good").loo_check, _run(diagnosis, "narrow").loo_check
    assert good.arviz == diagnosis.arviz == arviz_compat.version()
    for c in (good, narrow):
        assert c.khat_max_abs_diff <= LOO_KHAT_TOLERANCE and np.all(np.isfinite(c.khat))
    assert good.compared == POINTS and good.log_px_max_z <= LOG_PX_Z and good.agree
    assert np.all(np.abs(good.log_px - _log_px_exact(ppca)) < 4 * good.log_px_se)
    # every narrow point has k-hat > 0.7: its s.e. cannot be trusted, so log p(x) is not compared there
    assert narrow.compared == 0 and narrow.log_px_max_z is None and narrow.agree
    assert not any("loo_approximate_posterior" in w for w in diagnosis.warnings)


@pytest.mark.skipif(arviz_compat.has_loo_approximate_posterior(), reason="ArviZ >= 1.0 has loo_approximate_posterior")
def test_without_loo_approximate_posterior_there_is_no_check(diagnosis):
    assert diagnosis.arviz == arviz_compat.version()
    assert all(r.loo_check is None for r in diagnosis.runs)


def test_draws_are_arviz_data_and_round_trip_through_netcdf(diagnosis, tmp_path):
    r = _run(diagnosis, "good")
    post = group(r.q_data, "posterior")
    assert dict(post["z"].sizes) == {"chain": 1, "draw": FAST["draws"], "point": POINTS, "z_dim": 2}
    assert list(post["point"].values) == list(range(POINTS))
    # q's summary is the draws' own moments
    assert np.allclose(r.q.mean, post["z"].values[0].mean(0), atol=1e-6)
    diagnosis.save(tmp_path)
    assert (tmp_path / "good" / "q.nc").exists() and (tmp_path / "good" / "reference.nc").exists()
    assert not list(tmp_path.glob("**/.tmp-*"))  # every file was renamed into place
    back = load_diagnosis(tmp_path)
    rb = next(x for x in back.runs if x.name == "good")
    assert np.array_equal(group(rb.q_data, "posterior")["z"].values, post["z"].values)
    assert np.array_equal(rb.khat.values, r.khat.values) and rb.summary == r.summary
    assert np.array_equal(rb.grid.log_prob, r.grid.log_prob)
    assert np.array_equal(rb.generated.samples, r.generated.samples)
    assert back.settings == diagnosis.settings
    # the report's tables read the same from memory and from disk
    shown = lambda d: [[fmt(v) for v in row] for t in build_tables(d) for row in t.rows]
    assert shown(back) == shown(diagnosis)


def test_an_older_diagnosis_folder_says_to_diagnose_again(diagnosis, tmp_path):
    diagnosis.save(tmp_path)
    path = tmp_path / "diagnostics.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(raw | {"format": "pyro_vae.diagnostics/1"}))
    with pytest.raises(PyroVAEError, match="pyro_vae.diagnostics/1.*re-run 'pyro-vae diagnose") as e:
        load_diagnosis(tmp_path)
    assert "\n" not in str(e.value)


class OneBadPoint(NarrowGuide):
    """The VAE's guide, narrowed at row 2 alone: a guide that reads its rows by index."""

    def guide(self, x):
        loc, scale = q_loc_scale(self.vae, x)
        f = torch.ones(x.shape[0], 1)
        f[2] = NARROW
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale * f).to_event(1))


@pytest.mark.parametrize("reference, sbc_sims", [("none", 10), ("nuts", 0), ("grid", 0)])
def test_the_checks_before_any_work_run_a_program_on_all_the_points(subjects, reference, sbc_sims):
    """A guide that reads row 2 runs on the diagnosed points: the up-front checks must not try it on two rows."""
    s = Subject("mixed", OneBadPoint(subjects[0].model), subjects[0].x, subjects[0].point_index)
    check_reference_possible([s], DiagnoseSettings(**{**FAST, "reference": reference, "sbc_sims": sbc_sims}))


@pytest.mark.slow
def test_khat_is_per_point(subjects, ppca):
    """One bad point among good ones: per-point k-hat names it (a pooled k-hat could not)."""
    good = subjects[0].model
    s = Subject("mixed", OneBadPoint(good), subjects[0].x, subjects[0].point_index)
    # k-hat reads q's own draws: no local fit is needed (this guide does not broadcast, so a fit runs draw by draw)
    d = diagnose([s], DiagnoseSettings(**{**FAST, "reference": "none", "sbc_sims": 0, "local_steps": 0}), progress=False)
    r = d.runs[0]
    k = r.khat.values
    assert k[2] > KHAT_BAD and int(np.argmax(k)) == 2
    assert r.khat.bad == 1 and r.summary.worst[0].point == 2
    assert r.comparison is None and r.reference.method == "none"  # no reference asked for


def test_point_mass_guide(ppca):
    """A delta guide: no density, so no k-hat and an infinite KL; the rest still works."""
    model = ppca.build("delta")
    x = torch.tensor(ppca.x, dtype=torch.float32)
    s = Subject("delta", model, x, list(range(POINTS)))
    d = diagnose([s], DiagnoseSettings(**{**FAST, "draws": 200, "local_steps": 60, "sbc_sims": 50}), progress=False)
    r = d.runs[0]
    assert r.point_mass_guide and r.khat.values is None
    assert r.summary.kl_gauss is None and r.summary.sd_ratio < 1e-6
    # W2 per dim of a point mass at the posterior mean from a Gaussian: its sd
    assert r.summary.w2 == pytest.approx(np.sqrt(np.diag(ppca.S)).mean(), rel=0.05)
    # MAP at the posterior mode: the local MAP cannot improve on it
    assert abs(r.summary.gap) < 1e-3
    assert r.sbc.flagged == ["z[0]", "z[1]"]
    assert any("point mass" in w for w in d.warnings)
    tables = {t.id: t for t in build_tables(d)}
    assert fmt(tables["khat"].rows[0][2]) == "—"


def test_grid_reference_needs_a_2d_latent():
    cfg = config_from_dict({"model": {"latent_dim": 3, "likelihood": "normal", "scale": 1.0,
                                      "encoder": {"hidden": [8]}, "decoder": {"hidden": [8]}}})
    model = build_model(cfg.model, D)
    s = Subject("three", model, torch.zeros(4, D), [0, 1, 2, 3])
    with pytest.raises(PyroVAEError, match="needs one 2-D latent.*use --reference nuts"):
        diagnose([s], DiagnoseSettings(reference="grid"), progress=False)


def test_nuts_runs_two_chains_with_rhat_and_ess(subjects):
    """A short NUTS run (fast): chains, R-hat and ESS per point and dimension, and the check against the grid."""
    settings = DiagnoseSettings(points=2, reference="nuts", draws=200, nuts_warmup=60, nuts_samples=60,
                                nuts_chains=2, local_steps=20, sbc_sims=0)
    s = Subject("good", subjects[0].model, subjects[0].x[:2], [0, 1])
    d = diagnose([s], settings, progress=False)
    r = d.runs[0]
    ref = r.reference
    assert ref.method == "grid" and ref.checks_nuts  # 2-D: the grid is the reference, NUTS is checked against it
    nuts = ref.nuts
    assert nuts.chains == 2 and nuts.rhat.shape == (2, 2) and nuts.ess_bulk.shape == (2, 2)
    assert dict(group(r.nuts_data, "posterior")["z"].sizes) == {"chain": 2, "draw": 60, "point": 2, "z_dim": 2}
    # even a short run lands near the exact answer: within 4.5 of its Monte Carlo s.e.
    assert nuts.ess_bulk_min > 10 and nuts.rhat_max < 1.1
    assert nuts.max_std_mean_error_vs_grid < 4.5 / math.sqrt(nuts.ess_bulk_min)
    ids = [t.id for t in build_tables(d)]
    assert "nuts_check" in ids


# ---------------------------------------------------------------------------
# the report


class _Page(html.parser.HTMLParser):
    """Tables (id -> rows of cell texts), images and the warnings block of the report."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.warnings = {}, [], ""
        self._table = self._row = self._cell = None
        self._in_warn = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("data-table"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(a)
        if a.get("id") == "warnings" or self._in_warn:
            self._in_warn += tag not in ("br", "img")

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        if self._in_warn:
            self._in_warn -= 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_warn:
            self.warnings += data


@pytest.fixture(scope="module")
def report(diagnosis, tmp_path_factory):
    """The report of a diagnosis read back from its folder: it needs no model."""
    out = tmp_path_factory.mktemp("report")
    diagnosis.save(out)
    paths = write_report(load_diagnosis(out), out)
    page = _Page()
    page.feed(paths["html"].read_text())
    return out, json.loads(paths["json"].read_text()), page


def test_report_images_exist(report):
    out, results, page = report
    # every figure, the models' graphs included, is a PNG this report drew
    assert len(page.images) == len(results["figures"]) >= 8
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / img["data-file"]).read_bytes() == data  # the same figure is beside the page
    md = (out / "report.md").read_text()
    for f in results["figures"]:
        assert f"]({f['file']})" in md and (out / f["file"]).exists()
    sections = {f["section"] for f in results["figures"]}
    assert {"khat", "comparison", "pairs", "sbc", "generated"} <= sections


def test_report_tables_have_the_numbers_of_results_json(report):
    out, results, page = report
    assert {t["id"] for t in results["tables"]} <= set(page.tables)
    for t in results["tables"]:
        rows = page.tables[t["id"]]
        assert len(rows) == len(t["rows"]), t["id"]
        for shown, raw in zip(rows, t["rows"]):
            assert len(shown) == len(raw)
            for text, v in zip(shown, raw):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                    assert float(text) == pytest.approx(v, rel=5e-4, abs=1e-12), (t["id"], text, v)
                else:
                    assert text == fmt(v)



def test_report_tables_agree_with_the_closed_form(report, ppca):
    out, results, page = report
    table = lambda i: {row[0]: row for row in next(t for t in results["tables"] if t["id"] == i)["rows"]}
    # k-hat bands: the narrow q's weights are heavy-tailed at every point (k about 0.96)
    assert table("khat")["narrow"][4:7] == [0, 0, POINTS]
    comp = table("comparison")
    ratio = float(np.exp(np.log(ppca.mf_sd / np.sqrt(np.diag(ppca.S))).mean()))
    for name, factor in (("good", 1.0), ("narrow", NARROW)):
        assert comp[name][3] == pytest.approx(factor * ratio, rel=4 / math.sqrt(2 * FAST["draws"]))  # sd ratio
    m = ppca.post_mean(ppca.x)
    gain = np.mean(ppca.elbo(ppca.x, m, np.tile(ppca.mf_sd, (POINTS, 1)))
                   - ppca.elbo(ppca.x, m, np.tile(NARROW * ppca.mf_sd, (POINTS, 1))))
    assert abs(comp["narrow"][8] - gain) < 4 * comp["narrow"][9]  # amortization gap at its s.e.
    assert comp["good"][8] < 4 * comp["good"][9]  # q is the optimum: a per-point fit cannot gain


def test_report_shows_the_arviz_loo_check_or_says_it_was_not_available(report):
    out, results, page = report
    rows = {r[0]: r for r in page.tables["loo"]}
    assert set(rows) == {"good", "narrow"}
    if arviz_compat.has_loo_approximate_posterior():
        assert rows["good"][1] == arviz_compat.version() and rows["good"][-1] == "agree"
    else:
        for r in rows.values():
            assert r[-1].startswith(f"not available: diagnosed with ArviZ {arviz_compat.version()}")
    assert f"with ArviZ {arviz_compat.version()}" in (out / "report.md").read_text()


def test_report_warns_about_the_poor_guide(report):
    out, results, page = report
    assert "narrow: POOR POSTERIOR" in page.warnings
    assert "good" not in page.warnings.replace("good but", "")
    khat_rows = {r[0]: r for r in page.tables["khat"]}
    assert khat_rows["narrow"][-1].startswith("POOR")
    assert khat_rows["good"][-1].startswith("good")
    assert "POOR POSTERIOR" in (out / "report.md").read_text()


CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and os.path.exists(p)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    out, results, page = report
    url = (out / "index.html").resolve().as_uri()
    env = dict(os.environ, HOME=str(tmp_path))
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = _Page()
    rendered.feed(dom.stdout)
    assert len(rendered.images) == len(page.images)
    assert set(rendered.tables) == set(page.tables)
    shot = tmp_path / "shot.png"
    r = subprocess.run(base + ["--window-size=1200,2400", f"--screenshot={shot}", url], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1100
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and figures were drawn


# ---------------------------------------------------------------------------
# the command line, on a run directory


@pytest.fixture(scope="module")
def tiny_run(ppca, tmp_path_factory):
    """A real (briefly trained) 2-D run directory."""
    from pyro_vae.app import train

    folder = tmp_path_factory.mktemp("runs")
    g = np.random.default_rng(1)
    z = g.normal(size=(400, 2))
    np.save(folder / "x.npy", (z @ ppca.W.T + ppca.b + SIGMA * g.normal(size=(400, D))).astype(np.float32))
    cfg = config_from_dict({
        "data": {"train": str(folder / "x.npy"), "test_fraction": 0.1},
        "model": {"latent_dim": 2, "likelihood": "normal", "scale": SIGMA, "encoder": {"hidden": []},
                  "decoder": {"hidden": []}},
        "train": {"epochs": 3, "batch_size": 60, "lr": 0.02, "device": "cpu", "eval_every": 1},
    })
    train(cfg, folder / "run", progress=False, plots=False, iw_samples=20)
    return folder / "run"


CLI_FAST = ["--points", "3", "--reference", "grid", "--draws", "200", "--local-steps", "30", "--sbc-sims", "20", "--quiet"]


@pytest.mark.slow
def test_cli_diagnose_then_report(tiny_run, tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", str(tiny_run), "--out", str(out)] + CLI_FAST) == 0
    printed = capsys.readouterr().out
    assert "PSIS k-hat" in printed and "diagnostics.json" in printed
    saved = json.loads((out / "diagnostics.json").read_text())
    assert saved["settings"]["points"] == 3 and saved["runs"][0]["name"] == "run"
    assert (out / "run" / "q.nc").exists() and (out / "run" / "reference.nc").exists()
    stamp = (out / "diagnostics.json").stat().st_mtime_ns
    # report on the same runs reuses the diagnostics instead of computing them again
    assert main(["report", str(tiny_run), "--out", str(out), "--quiet"]) == 0
    assert (out / "diagnostics.json").stat().st_mtime_ns == stamp
    for name in ("index.html", "report.md", "results.json", "figures/training.png", "figures/khat.png"):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    assert results["runs"][0]["info"]["epochs"] == 3
    # another setting: diagnosed again
    assert main(["report", str(tiny_run), "--out", str(out)] + CLI_FAST[:-1] + ["--seed", "1", "--quiet"]) == 0
    assert json.loads((out / "diagnostics.json").read_text())["settings"]["seed"] == 1


@pytest.mark.parametrize("args, message", [
    (["diagnose", "no/such/run", "--out", "{tmp}/d"], "does not exist"),
    (["diagnose", "{run}", "--out", "{tmp}/d", "--points", "0"], "--points must be an integer >= 1"),
    (["report", "{run}", "--out", "{tmp}/d", "--nuts-chains", "1"], "--nuts-chains must be an integer >= 2"),
    (["diagnose", "{run}", "--out", "{run}"], "is a run directory"),
    (["report", "{run}", "--out", "{run}/config.toml"], "is a file"),
])
def test_cli_user_errors_are_one_line(tiny_run, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, run=tiny_run) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err
    assert not (tmp_path / "d").exists()  # nothing written


def test_cli_grid_reference_on_a_3d_run_fails_before_writing(tiny_run, tmp_path, capsys):
    from pyro_vae.app import train

    cfg = config_from_dict({
        "data": {"train": str(tiny_run.parent / "x.npy")},
        "model": {"latent_dim": 3, "likelihood": "normal", "scale": SIGMA, "encoder": {"hidden": []},
                  "decoder": {"hidden": []}},
        "train": {"epochs": 1, "batch_size": 100, "device": "cpu"},
    })
    train(cfg, tmp_path / "three", progress=False, plots=False, iw_samples=10)
    out = tmp_path / "d"
    assert main(["diagnose", str(tmp_path / "three"), "--out", str(out), "--reference", "grid"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs one 2-D latent" in err and "--reference nuts" in err and "\n" not in err
    assert not out.exists()


# ---------------------------------------------------------------------------
# slow: NUTS against the closed form, and the README's sequence on the digits


@pytest.mark.slow
def test_nuts_reference_matches_the_exact_posterior(subjects, ppca):
    s = subjects[0]
    d = diagnose([s], DiagnoseSettings(points=POINTS, reference="nuts", sbc_sims=0, local_steps=100), progress=False)
    r = d.runs[0]
    nuts = r.reference.nuts
    z = group(r.nuts_data, "posterior")["z"].values  # (chain, draw, point, dim)
    ess = nuts.ess_bulk
    sd = np.sqrt(np.diag(ppca.S))
    err = (z.mean((0, 1)) - ppca.post_mean(ppca.x)) / sd
    assert np.all(np.abs(err) * np.sqrt(ess) < 4.5), err * np.sqrt(ess)
    sd_err = z.reshape(-1, POINTS, 2).std(0) / sd - 1
    assert np.all(np.abs(sd_err) < 5 / np.sqrt(ess))
    assert nuts.rhat_max < 1.02 and nuts.ess_bulk_min > 100
    assert nuts.max_std_mean_error_vs_grid < 4.5 / np.sqrt(nuts.ess_bulk_min)


@pytest.mark.slow
def test_readme_sequence_on_digits(tmp_path, capsys):
    """Two objectives on the default data, then diagnose and report (small settings)."""
    small = ["--set", "train.epochs=2", "--set", "model.latent_dim=4", "--set", "model.encoder.hidden=[64]",
             "--set", "model.decoder.hidden=[64]", "--quiet"]
    for elbo in ("trace", "meanfield"):
        assert main(["train", "--set", f"train.elbo={elbo}", "--out", str(tmp_path / elbo)] + small) == 0
    runs = [str(tmp_path / "trace"), str(tmp_path / "meanfield")]
    opts = ["--points", "4", "--nuts-warmup", "60", "--nuts-samples", "60", "--sbc-sims", "40", "--quiet"]
    assert main(["diagnose", *runs, "--out", str(tmp_path / "report")] + opts) == 0
    assert main(["report", *runs, "--out", str(tmp_path / "report")] + opts) == 0
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["info"]["objective"] for r in results["runs"]] == ["trace", "meanfield"]
    chains = DiagnoseSettings().nuts_chains
    assert all(r["reference"]["method"] == "nuts" and r["reference"]["chains"] == chains for r in results["runs"])
    files = {Path(f["file"]).name for f in results["figures"]}
    assert {"reconstructions.png", "samples.png", "traversal_trace.png", "forest.png", "pair_meanfield_worst.png"} <= files
    page = _Page()
    page.feed((tmp_path / "report" / "index.html").read_text())
    assert len(page.images) == len(results["figures"])
