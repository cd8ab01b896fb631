"""Honest error bars, checked against closed forms.

Oracles: probabilistic PCA, whose marginal log p(x) and Gaussian posterior
are exact, so each point's importance-sampled interval can be checked against
the truth; and, for the diagnostics, the 2-D pPCA of tests/test_diagnostics.py,
whose exact posterior variances test the grid and whose diagonal-Gaussian
optimum gives an amortization gap of exactly 0.

Tolerances: coverage fractions get 4 binomial standard deviations; Monte Carlo
means 4 of their standard errors.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.diagnostics.arviz_io import pareto_khat

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluate import PPCA, ppca  # noqa: E402  (the closed-form oracle, shared)

NOMINAL = math.erf(2 / math.sqrt(2))  # P(|N(0, 1)| <= 2) = 0.954


class ScaledPPCA(PPCA):
    """pPCA whose guide has the exact posterior's mean and correlation, its sd multiplied by ``factor``.

    For factor c < 1 the weights p(z|x) / q(z|x) have Pareto shape 1 - c^2: 0.75 at c = 1/2.
    """

    def __init__(self, base: PPCA, factor: float):
        super().__init__(base.W, base.mu, base.s)
        self.factor = factor

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.posterior_mean(x),
                                                     covariance_matrix=self.factor**2 * self.post_cov))


def _coverage(r, exact):
    """Fraction of points whose +-2 s.e. interval holds the exact log p(x), and the binomial sd of it."""
    inside = ((r.log_likelihood - exact).abs() <= 2 * r.log_likelihood_var.sqrt()).double()
    n = inside.numel()
    return float(inside.mean()), math.sqrt(NOMINAL * (1 - NOMINAL) / n)


# -- k-hat in evaluate ----------------------------------------------------------------------------


def test_khat_is_psis_of_all_k_weights_though_only_the_tail_is_kept():
    m, g = ppca()
    x = m.sample(30, g)
    half = ScaledPPCA(m, 0.5)
    # a budget of 250 particles per chunk: each point's 1000 draws arrive in 4 chunks
    r = pv.evaluate_points(half, x, iw_samples=1000, budget=250 * x.shape[1], prior_samples=0,
                           reconstruction_error=False, keep_log_weights=True)
    assert r.log_weights.shape == (30, 1000)
    np.testing.assert_array_equal(r.iw_khat.numpy(), pareto_khat(r.log_weights.numpy()))
    s = r.summary()
    assert s["iw_khat_max"] == float(r.iw_khat.max())
    assert s["iw_khat_median"] == pytest.approx(float(np.median(r.iw_khat.numpy())))
    assert s["iw_khat_above_0_7"] == int((r.iw_khat > 0.7).sum()) > 0
    assert [row["iw_khat"] for row in r.to_rows()] == r.iw_khat.tolist()


def test_exact_guide_has_bounded_weights_and_no_warning():
    m, g = ppca()
    x = m.sample(20, g)
    r = pv.evaluate_points(m, x, iw_samples=200, prior_samples=0)
    # all K weights equal: nothing to fit, the tail is bounded (k-hat -inf), and the s.e. (0) is right
    assert bool((r.iw_khat == -math.inf).all())
    s = r.summary()
    assert s["iw_khat_above_0_7"] == 0 and s["log_likelihood_warning"] is None


def test_half_width_guide_is_biased_beyond_its_se_and_the_warning_fires():
    m, g = ppca()
    x = m.sample(300, g)
    exact = m.marginal().log_prob(x)
    r = pv.evaluate_points(ScaledPPCA(m, 0.5), x, iw_samples=1000, prior_samples=0, reconstruction_error=False)
    s = r.summary()
    # the failure the warning exists for: biased low far beyond the reported s.e., intervals too short
    assert float((exact - r.log_likelihood).mean()) > 4 * s["log_likelihood_se"]
    cover, sd = _coverage(r, exact)
    assert cover < NOMINAL - 4 * sd, cover
    # k-hat sees it (the true shape is 0.75), and the warning says what to do
    assert s["iw_khat_median"] > 0.5 and s["iw_khat_above_0_7"] > 0
    w = s["log_likelihood_warning"]
    assert w is not None and f"k-hat > 0.7 for {s['iw_khat_above_0_7']} of 300 points" in w
    assert "raise iw_samples" in w and "guide" in w


@pytest.mark.parametrize("factor", [None, 1.5])
def test_good_guide_intervals_cover_the_exact_log_likelihood(factor):
    """The best diagonal q (Pareto shape |rho| < 0.5) and a q 1.5x wider than the posterior (bounded weights)."""
    m, g = ppca()
    x = m.sample(400, g)
    exact = m.marginal().log_prob(x)
    q = PPCA(m.W, m.mu, m.s, "meanfield") if factor is None else ScaledPPCA(m, factor)
    r = pv.evaluate_points(q, x, iw_samples=1000, prior_samples=0, reconstruction_error=False)
    cover, sd = _coverage(r, exact)
    assert abs(cover - NOMINAL) < 4 * sd, cover
    s = r.summary()
    assert s["iw_khat_above_0_7"] == 0 and s["log_likelihood_warning"] is None, s["iw_khat_max"]
    assert abs(s["log_likelihood"] - float(exact.mean())) < 4 * s["log_likelihood_se"]
