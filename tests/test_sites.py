"""The trace layer: site predicates, layouts, per-point densities against closed forms, and its error messages."""

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.infer.layout import build_layout, latent_matrix, latent_values, trace_draws
from pyro_vae.infer.sites import (is_factor, is_latent, is_observed, is_point_mass, is_subsample, point_densities,
                                  site_matrix, trace_pair)
from pyro_vae.evaluation.estimators import evaluate_points
from pyro_vae.infer.data_name import named_data

D64 = torch.float64


class Conjugate:
    """z ~ N(0, I_2), x | z ~ N(W z + mu, s^2 I_4) per point, with a diagonal Gaussian guide."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(4, 2, generator=g, dtype=D64)
        self.mu = torch.randn(4, generator=g, dtype=D64)
        self.s = 0.6
        self.V = torch.randn(2, 4, generator=g, dtype=D64) * 0.3

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.V.T, 0.8).to_event(1))

    def posterior(self, x):
        """The exact p(z | x): mean (b, 2) and covariance (2, 2)."""
        prec = torch.eye(2, dtype=D64) + self.W.T @ self.W / self.s**2
        cov = torch.linalg.inv(prec)
        return (x - self.mu) @ self.W @ cov.T / self.s**2, cov

    def log_evidence(self, x):
        c = self.W @ self.W.T + self.s**2 * torch.eye(4, dtype=D64)
        return dist.MultivariateNormal(self.mu, covariance_matrix=c).log_prob(x)


def _data(n=6, seed=1):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=D64)


def test_per_point_densities_match_closed_forms_of_a_conjugate_model():
    m, x = Conjugate(), _data()
    layout = build_layout(m, named_data(m, x))
    k = 7
    pyro.set_rng_seed(0)
    gtr, mtr = trace_pair(m, named_data(m, x), k, layout.nest)
    z = latent_values(gtr, layout, k, x.shape[0])["z"]  # (k, b, 2)
    assert z.shape == (k, 6, 2)
    d = point_densities(gtr, mtr, layout, k, x.shape[0])
    log_lik = dist.Normal(z @ m.W.T + m.mu, m.s).log_prob(x).sum(-1)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_q = dist.Normal(x @ m.V.T, 0.8).log_prob(z).sum(-1)
    torch.testing.assert_close(d.log_lik, log_lik, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_prior, log_prior, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_q, log_q, rtol=1e-12, atol=1e-12)
    # Bayes' rule as an independent check: log p(x, z) - log p(z | x) = log p(x) for every draw
    mean, cov = m.posterior(x)
    log_post = dist.MultivariateNormal(mean, covariance_matrix=cov).log_prob(z)
    torch.testing.assert_close(d.log_joint - log_post, m.log_evidence(x).expand(k, -1), rtol=1e-10, atol=1e-10)


class TwoSites:
    """Two latent sites listed in reverse guide order, an inner plate, a factor and a subsampled plate."""

    latent_sites = ("w", "z")
    obs_site = "x"

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))  # (b, 1, 2)
            with pyro.plate("cols", 3, dim=-1):
                w = pyro.sample("w", dist.Gamma(torch.tensor(2.0, dtype=D64), 1.0))  # (b, 3)
                pyro.sample("x", dist.Normal(z.sum(-1) * w, 1.0), obs=x)
            pyro.factor("penalty", -(z**2).sum(-1))

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(x[:, :2].unsqueeze(-2), 0.5).to_event(1))
            with pyro.plate("cols", 3, dim=-1):
                pyro.sample("w", dist.Gamma(torch.tensor(3.0, dtype=D64), 1.0 + x.abs()))


def test_layout_orders_sizes_and_labels_every_latent_site():
    m, x = TwoSites(), _data(5)[:, :3]
    layout = build_layout(m, named_data(m, x))
    assert layout.nest == 2 and layout.data_dim == -2
    assert layout.sites == ["w", "z"]  # latent_sites order, not guide order
    assert layout.sizes == [3, 2] and layout.dim == 5
    assert layout.labels == ["w[0]", "w[1]", "w[2]", "z[0]", "z[1]"]
    assert layout.shapes == {"w": (5, 3), "z": (5, 1, 2)}
    assert layout.event_dims == {"w": 0, "z": 1}
    assert layout.supports["w"] is dist.Gamma.support and layout.observed == ["x"]
    assert not layout.point_mass
    pyro.set_rng_seed(0)
    gtr, _ = trace_pair(m, named_data(m, x))
    z = latent_matrix(gtr, layout, 1, 5, draw_dim=False)[0]
    w_val, z_val = gtr.nodes["w"]["value"], gtr.nodes["z"]["value"]
    torch.testing.assert_close(z, torch.cat([w_val, z_val[:, 0]], -1))
    parts = layout.split(z.numpy())
    np.testing.assert_array_equal(parts["w"], w_val.numpy())


def test_site_matrix_puts_draws_then_points_first():
    # a value with a leading MCMC draw dim, the data plate at -2, an inner plate of 3 and an event of 2
    v = torch.arange(4 * 5 * 3 * 2, dtype=D64).reshape(4, 5, 3, 2)
    m = site_matrix(v, 1, 2, -2, 4, 5, leading_draw=True)
    torch.testing.assert_close(m, v.reshape(4, 5, 6))
    # a site without the inner plate dim (broadcast over it) is expanded, not misread
    v = torch.arange(5 * 2, dtype=D64).reshape(5, 1, 2)
    m = site_matrix(v.unsqueeze(0), 1, 2, -2, 3, 5)
    torch.testing.assert_close(m, v.reshape(1, 5, 2).expand(3, 5, 2))


def test_site_predicates_tell_latent_observed_factor_and_subsample_apart():
    def model():
        with pyro.plate("data", 10, subsample_size=4):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(4))
            pyro.factor("f", torch.zeros(4))

    tr = pyro.poutine.trace(model).get_trace()
    kinds = {name: (is_latent(s), is_observed(s), is_factor(s), is_subsample(s)) for name, s in tr.nodes.items()
             if s["type"] == "sample"}
    assert kinds == {"data": (False, False, False, True), "z": (True, False, False, False),
                     "x": (False, True, False, False), "f": (False, False, True, False)}


class Mixed(Conjugate):
    """A guide with one point-mass site and one Gaussian site."""

    latent_sites = ("z", "u")

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))
            u = pyro.sample("u", dist.Normal(torch.zeros(x.shape[0], dtype=D64), 1.0))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu + u.unsqueeze(-1), self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(x @ self.V.T).to_event(1))
            pyro.sample("u", dist.Normal(x.mean(-1), 0.5))


def test_any_point_mass_latent_means_no_proposal_density():
    assert is_point_mass(dist.Delta(torch.zeros(3, 2)).to_event(1).mask(torch.ones(3, dtype=torch.bool)))
    assert not is_point_mass(dist.Normal(torch.zeros(3), 1.0).expand([4, 3]).to_event(1))
    x = _data()
    assert build_layout(Mixed(), named_data(Mixed(), x)).point_mass
    assert not build_layout(Conjugate(), named_data(Conjugate(), x)).point_mass
    r = evaluate_points(Mixed(), x, iw_samples=20, prior_samples=0, seed=0)
    assert r.point_mass and r.log_likelihood is None and r.iw_samples == 0
    assert r.latent_names == ["z[0]", "z[1]", "u"]


class _Bad(Conjugate):
    pass


def _bad(model=None, guide=None, **attrs):
    m = _Bad()
    if model is not None:
        m.model = model.__get__(m)
    if guide is not None:
        m.guide = guide.__get__(m)
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def _outside_model(self, x):
    z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.s).to_event(1), obs=x)


def _outside_guide(self, x):
    pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))


def _undeclared_model(self, x):
    with pyro.plate("data", x.shape[0]):
        # a (3, b, 2) batch: the leading 3 is no plate
        z = pyro.sample("z", dist.Normal(torch.zeros(3, x.shape[0], 2, dtype=D64), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(0) @ self.W.T + self.mu, self.s).to_event(1), obs=x)


def _undeclared_guide(self, x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(3, x.shape[0], 2, dtype=D64), 1.0).to_event(1))


def _unlisted_guide(self, x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ self.V.T, 0.8).to_event(1))
        pyro.sample("extra", dist.Normal(torch.zeros(x.shape[0], dtype=D64), 1.0))


def _guideless_model(self, x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))
        u = pyro.sample("u", dist.Normal(torch.zeros(x.shape[0], dtype=D64), 1.0))
        pyro.sample("x", dist.Normal(z @ self.W.T + self.mu + u.unsqueeze(-1), self.s).to_event(1), obs=x)


@pytest.mark.parametrize("bad, message", [
    (lambda: _bad(_outside_model, _outside_guide), r"latent site 'z' is outside pyro.plate\('data'\)"),
    (lambda: _bad(_undeclared_model, _undeclared_guide), "a sample site has 2 batch dims but the model declares only 1 plates"),
    (lambda: _bad(obs_site="y"), "obs_site is 'y' but the model has no such observed sample site"),
    (lambda: _bad(latent_sites=("q",)), "latent site 'q' is not a latent sample site of the model"),
    (lambda: _bad(guide=_unlisted_guide), "guide site 'extra' has no matching sample site in the model"),
    (lambda: _bad(_guideless_model, latent_sites=("z", "u")), "latent site 'u' has no site in the guide"),
])
def test_each_bad_program_gets_its_one_line_error(bad, message):
    with pytest.raises(pv.PyroVAEError, match=message) as e:
        build_layout(bad(), named_data(bad(), _data()))
    assert "\n" not in str(e.value)


def test_a_model_that_fails_on_the_data_names_the_data():
    with pytest.raises(pv.PyroVAEError, match="fails on the diagnosed points") as e:
        build_layout(Conjugate(), named_data(Conjugate(), _data()[:, :3]), data="the diagnosed points")
    assert "check that the data have the columns" in str(e.value)
    # the evaluator reports it the same way, naming its own data
    with pytest.raises(pv.PyroVAEError, match="fails on the evaluation data"):
        evaluate_points(Conjugate(), _data()[:, :3])


def test_evaluated_log_likelihood_of_the_conjugate_model_is_within_its_standard_error():
    m, x = Conjugate(), _data()
    r = evaluate_points(m, x, iw_samples=2000, prior_samples=0, seed=0)
    se = math.sqrt(float(r.log_likelihood_var.sum())) / x.shape[0]
    assert abs(float(r.log_likelihood.mean() - m.log_evidence(x).mean())) < 4 * se + 1e-12


def _one_at_a_time(layout):
    """The layout of a program that does not broadcast over draws (what build_layout's probe would find)."""
    return dataclasses.replace(layout, broadcasts=False)


def test_draws_traced_one_at_a_time_stack_into_per_draw_matrices_that_match_closed_forms():
    m, x = Conjugate(), _data()
    layout = build_layout(m, named_data(m, x))
    assert layout.broadcasts
    k, b = 5, x.shape[0]
    pyro.set_rng_seed(0)
    z, d = trace_draws(m, named_data(m, x), k, _one_at_a_time(layout),
                       lambda g, t, k: (latent_values(g, layout, k, b)["z"], point_densities(g, t, layout, k, b)))
    assert z.shape == (k, b, 2) and d.log_lik.shape == (k, b)
    assert (z[1:] != z[:1]).all()  # k independent draws, not one draw repeated
    torch.testing.assert_close(d.log_lik, dist.Normal(z @ m.W.T + m.mu, m.s).log_prob(x).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_prior, dist.Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_q, dist.Normal(x @ m.V.T, 0.8).log_prob(z).sum(-1), rtol=1e-12, atol=1e-12)


def test_draws_traced_one_at_a_time_keep_their_order_with_nested_plates():
    m, x = TwoSites(), _data(5)[:, :3]
    layout = build_layout(m, named_data(m, x))
    k = 4
    pyro.set_rng_seed(1)
    got = trace_draws(m, named_data(m, x), k, _one_at_a_time(layout), lambda g, t, k: latent_matrix(g, layout, k, 5))
    pyro.set_rng_seed(1)
    plain = [latent_matrix(trace_pair(m, named_data(m, x))[0], layout, 1, 5, draw_dim=False) for _ in range(k)]
    assert torch.equal(got, torch.cat(plain, 0)) and got.shape == (k, 5, 5)


def _two_argument_model(self, x, y):
    Conjugate.model(self, x)


def _bernoulli_model(self, x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D64), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z @ self.W.T).to_event(1), obs=x)


@pytest.mark.parametrize("model, cause", [
    (_two_argument_model, r"give them the signature model\(self, x\) and guide\(self, x\)"),
    (_bernoulli_model, "check that the data have the support the model's likelihood was built for"),
])
def test_a_first_trace_that_fails_names_the_cause_it_saw(model, cause):
    with pytest.raises(pv.PyroVAEError, match="fails on the evaluation data with one draw per point") as e:
        build_layout(_bad(model), named_data(_bad(model), _data()))
    assert "\n" not in str(e.value)
    assert re.search(cause, str(e.value))
