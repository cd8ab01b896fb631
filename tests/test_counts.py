"""Count likelihoods: Pyro's laws over rows of counts, their support checks, and the graph path."""

import math

import pytest
import torch
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.errors import PyroVAEError
from pyro_vae.models.counts import RowMultinomial
from pyro_vae.models.likelihoods import LIKELIHOODS


def test_row_multinomial_scores_each_row_with_its_own_total():
    x = torch.tensor([[1., 2., 0.], [5., 0., 4.]])
    logits = torch.randn(2, 3)
    lik = LIKELIHOODS["multinomial"](3)
    d = lik.law(logits, x)
    for i in range(2):
        ref = dist.Multinomial(int(x[i].sum()), logits=logits[i]).log_prob(x[i])
        assert torch.allclose(d.log_prob(x)[i], ref)
    assert torch.allclose(d.mean.sum(-1), x.sum(-1))


def test_row_multinomial_draws_each_rows_total():
    totals = torch.tensor([3., 0., 40.])
    d = RowMultinomial(totals, torch.zeros(3, 4))
    s = d.sample((5,))
    assert s.shape == (5, 3, 4)
    assert torch.equal(s.sum(-1), totals.expand(5, 3))
    # the draws' mean: 40 trials over 4 equal features, 10 each (s.e. of a mean of 2000 draws ~ 0.06)
    big = RowMultinomial(torch.tensor([40.]), torch.zeros(1, 4)).sample((2000,))
    assert torch.allclose(big.mean(0), torch.full((1, 4), 10.0), atol=0.35)


@pytest.mark.parametrize("bad, where", [(0.5, "row 1, column 2: 0.5"), (-1.0, "row 1, column 2: -1"),
                                        (math.nan, "row 1, column 2: nan")])
def test_multinomial_refuses_non_counts_naming_row_and_column(bad, where):
    x = torch.ones(3, 4)
    x[1, 2] = bad
    with pytest.raises(PyroVAEError, match=where.replace(".", r"\.")):
        LIKELIHOODS["multinomial"](4).check_support(x, "the training data")


def test_multinomial_refuses_a_row_of_zeros():
    x = torch.ones(3, 4)
    x[2] = 0
    with pytest.raises(PyroVAEError, match="row 2 of the training data is all zeros"):
        LIKELIHOODS["multinomial"](4).check_support(x, "the training data")


def test_a_total_beyond_float32_is_refused():
    x = torch.ones(2, 3)
    x[1] = 2.0 ** 23 + 1
    with pytest.raises(PyroVAEError, match="row 1 .* totals 25165827 .* below the 16777216 .* column 1"):
        LIKELIHOODS["multinomial"](3).check_support(x, "the data")


def test_multinomial_vae_trains_and_evaluates_on_count_rows():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 12, generator=g), -1)
    x = torch.stack([torch.distributions.Multinomial(int(n), probs=p).sample() for n, p in
                     zip(torch.randint(5, 40, (200,), generator=g), probs)])
    model = pv.GraphModel(pv.ModelConfig(latent_dim=2, likelihood="multinomial", encoder={"hidden": [16]},
                                         decoder={"hidden": [16]}), data_dim=12)
    trainer = pv.fit(model, x[:150], x[150:], pv.TrainConfig(epochs=3, batch_size=50, seed=0), progress=False)
    losses = [h["train_loss"] for h in trainer.state.history]
    assert all(math.isfinite(v) for v in losses)
    r = pv.evaluate_points(model, x[150:], iw_samples=20)
    # a probability of a discrete outcome: log p(x) <= 0 for every row
    assert torch.isfinite(r.log_likelihood).all() and bool((r.log_likelihood <= 0).all())


def _counts(n=200, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    w = torch.randn(1, d, generator=g)
    return torch.poisson(torch.exp(1.0 + z @ w * 0.5), generator=g)


@pytest.mark.parametrize("keys", [
    {"likelihood": "poisson"}, {"likelihood": "zip"},
    {"likelihood": "negative_binomial", "library": "observed"},
    {"likelihood": "negative_binomial", "dispersion": "amortized"},
    {"likelihood": "zinb", "library": "latent"},
])
def test_count_vaes_train_and_evaluate(keys):
    x = _counts()
    model = pv.GraphModel(pv.ModelConfig(latent_dim=2, encoder={"hidden": [16]}, decoder={"hidden": [16]}, **keys),
                          data_dim=10)
    pv.fit(model, x[:150], x[150:], pv.TrainConfig(epochs=2, batch_size=50, seed=0), progress=False)
    r = pv.evaluate_points(model, x[150:], iw_samples=10)
    assert torch.isfinite(r.log_likelihood).all() and bool((r.log_likelihood <= 0).all())


def test_poisson_is_log_px_matches_quadrature_on_a_linear_one_dim_model():
    """log p(x) = log of the integral over z of N(z; 0, 1) prod_d Poisson(x_d; exp(w_d z + b_d)), by 1-D quadrature,
    against the importance-sampled estimate, within 3 of its standard errors per point."""
    d = 4
    model = pv.GraphModel(pv.ModelConfig(latent_dim=1, likelihood="poisson", encoder={"hidden": []},
                                         decoder={"hidden": []}), data_dim=d)
    w, b = torch.tensor([0.8, -0.5, 0.3, 1.0]), torch.tensor([1.0, 0.5, 2.0, 0.0])
    dec = [m for m in model.nets["x"].modules() if isinstance(m, torch.nn.Linear)]
    enc = [m for m in model.encoders["z"].modules() if isinstance(m, torch.nn.Linear)]
    assert len(dec) == 1 and len(enc) == 1
    with torch.no_grad():
        dec[0].weight.copy_(w.reshape(d, 1))
        dec[0].bias.copy_(b)
        # q(z | x) = N(0.1 * sum log1p(x) - 0.5, 0.8^2): a proposal wider than the posterior, the same for any x
        enc[0].weight.zero_()
        enc[0].weight[0].fill_(0.1)
        enc[0].bias.copy_(torch.tensor([-0.5, math.log(math.expm1(0.8 - 1e-3))]))
    g = torch.Generator().manual_seed(1)
    z = torch.randn(12, 1, generator=g)
    x = torch.poisson(torch.exp(z * w + b), generator=g)
    r = pv.evaluate_points(model, x, iw_samples=4000, seed=3)
    grid = torch.linspace(-9, 9, 20001, dtype=torch.float64)
    log_joint = (torch.distributions.Normal(0.0, 1.0).log_prob(grid)[:, None]
                 + torch.distributions.Poisson(torch.exp(grid[:, None, None] * w.double() + b.double()))
                 .log_prob(x.double()).sum(-1))
    exact = torch.logsumexp(log_joint, 0) + math.log(grid[1] - grid[0])
    se = r.log_likelihood_var.sqrt()
    assert bool((se > 0).all())
    assert bool(((r.log_likelihood - exact).abs() <= 3 * se + 1e-6).all()), (r.log_likelihood - exact) / se
