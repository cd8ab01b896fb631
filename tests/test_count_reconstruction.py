"""The reconstruction MSE of every count law compares counts with counts: the decoder's mean count at q's mean
(a multinomial's proportions times the row's total, an observed library's shares times it, a zero-inflated law's
(1 - pi) mu) against the row, computed here by hand from hand-set weights."""

import math

import pytest
import torch

import pyro_vae as pv


def _mean_by_hand(law: str, library: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[1]
    mu_out, gate = out[:, :d], out[:, d:2 * d]
    total = x.sum(1, keepdim=True)
    mu = torch.softmax(mu_out, -1) * total if library == "observed" or law == "multinomial" else mu_out.exp()
    if law in ("zip", "zinb"):
        mu = mu * (1 - torch.sigmoid(gate))
    return mu


@pytest.mark.parametrize("law, library", [
    ("poisson", "none"), ("poisson", "observed"), ("zip", "none"), ("negative_binomial", "none"),
    ("zinb", "observed"), ("multinomial", "none"),
])
def test_reconstruction_mse_is_of_mean_counts_for_every_count_law(law, library):
    d, m = 6, 0.4
    keys = {} if library == "none" else {"library": library}
    model = pv.GraphModel(pv.ModelConfig(latent_dim=1, likelihood=law, encoder={"hidden": []},
                                         decoder={"hidden": []}, **keys), data_dim=d)
    dec = next(mod for mod in model.nets["x"].modules() if isinstance(mod, torch.nn.Linear))
    enc = next(mod for mod in model.encoders["z"].modules() if isinstance(mod, torch.nn.Linear))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        dec.weight.copy_(torch.randn(dec.weight.shape, generator=g))
        dec.bias.copy_(torch.randn(dec.bias.shape, generator=g) + 1.0)
        enc.weight.zero_()  # q(z | x) has mean m for every row
        enc.bias.copy_(torch.tensor([m, math.log(math.expm1(0.5))]))
    x = torch.poisson(torch.full((20, d), 4.0), generator=g)
    x[0, 0] = 30.0  # one large count: a mean of proportions would miss it by about 30
    r = pv.evaluate_points(model, x, iw_samples=2, seed=0)
    out = (dec.weight[:, 0] * m + dec.bias).detach().expand(20, -1)
    expected = ((x - _mean_by_hand(law, library, out, x)) ** 2).mean(1)
    assert r.reconstruction_mse is not None
    torch.testing.assert_close(r.reconstruction_mse.double(), expected.double(), rtol=1e-5, atol=1e-5)
    if law == "multinomial":
        proportions = ((x - torch.softmax(out, -1)) ** 2).mean(1)
        assert float((r.reconstruction_mse - proportions).abs().max()) > 1.0
