"""The negative binomial's inverse dispersion starts at INIT_THETA (not at 1, from where a short run stalls far
from the Poisson the NB nests: README, "The negative binomial's dispersion"), and a law's mean and variance are
mu and mu + mu^2 / theta; theta is capped where the float32 density stops being right."""

import math

import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
from pyro_vae.models.counts import INIT_THETA, MAX_LOG_THETA


@pytest.mark.parametrize("likelihood", ["negative_binomial", "zinb"])
def test_a_fresh_nb_starts_at_init_theta_with_the_nb_moments(likelihood):
    d = 4
    model = pv.GraphModel(pv.ModelConfig(latent_dim=1, likelihood=likelihood), data_dim=d)
    lik = model.likelihood
    torch.testing.assert_close(lik.theta(), torch.full((d,), INIT_THETA))
    mu = torch.tensor([0.5, 2.0, 8.0, 16.0])
    out = torch.cat([mu.log(), torch.full((d,), -30.0)] if likelihood == "zinb" else [mu.log()])  # no dropout
    law = lik.law(out.unsqueeze(0)).base_dist
    torch.testing.assert_close(law.mean[0], mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(law.variance[0], mu + mu ** 2 / INIT_THETA, rtol=1e-5, atol=1e-6)


def test_theta_is_capped_where_the_float32_density_is_still_right():
    """Past MAX_LOG_THETA the float32 NB density errs (by hundreds of nats a row at theta = e^20, once the cap);
    at the cap it matches the float64 density within 1e-3 nats a count, and the Poisson within its variance."""
    model = pv.GraphModel(pv.ModelConfig(latent_dim=1, likelihood="negative_binomial"), data_dim=400)
    with torch.no_grad():
        model.likelihood.log_theta.fill_(20.0)
    assert float(model.likelihood.theta().detach().max()) == pytest.approx(math.exp(MAX_LOG_THETA), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    mu = torch.linspace(0.1, 200, 400).repeat(30, 1)
    x = torch.poisson(mu, generator=g)
    law = model.likelihood.law(mu.log()).base_dist
    theta = torch.full_like(mu, math.exp(MAX_LOG_THETA), dtype=torch.float64)
    exact = dist.NegativeBinomial(total_count=theta, logits=mu.double().log() - theta.log()).log_prob(x.double())
    assert float((law.log_prob(x).detach().double() - exact).abs().max()) < 1e-3
    # what the cap prevents: the same law at theta = e^20 in float32, wrong by far more than a nat a row
    far = torch.full_like(mu, 20.0).exp()
    wrong = dist.NegativeBinomial(total_count=far, logits=mu.log() - far.log()).log_prob(x).double().sum(-1)
    right = torch.distributions.Poisson(mu.double()).log_prob(x.double()).sum(-1)
    assert float((wrong - right).abs().min()) > 1.0
