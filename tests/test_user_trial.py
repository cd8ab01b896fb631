"""What a new user's trial found wrong or missing: per-row numbers of sequences count only real steps, the
amortization gap is never a clipped 0, sequences can be sampled with noise, ``--help`` and ``pyro-vae keys``
lead to a model, and long site lists and labels stay readable.
"""

from __future__ import annotations

import torch

import pyro_vae as pv
from pyro_vae.config import config_from_dict


def _chain(x_dim=3):
    nodes = {"z": {"dim": 2, "over": "time", "transition": {"type": "linear"},
                   "rnn": {"type": "gru", "hidden": 8}, "encoder": {"hidden": [8]}},
             "x": {"role": "observed", "over": "time", "likelihood": "normal", "parents": ["z"],
                   "net": {"hidden": [8]}}}
    torch.manual_seed(0)
    return pv.build_model(config_from_dict({"model": {"nodes": nodes}, "train": {"seed": 0}}).model, x_dim)


def _padded_pair(n=6, t=7, d=3):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 3, 1, 5, 7, 2])[:n]
    x = torch.randn(n, t, d, generator=g) * (torch.arange(t) < lengths[:, None]).unsqueeze(-1)
    data = {"x": x, "lengths": lengths}
    # padding far from the model's means: an average that counted padded steps would move a lot
    padded = {"x": torch.cat([x, torch.full_like(x, 9.0)], dim=1), "lengths": lengths}
    return data, padded


def test_reconstruction_mse_counts_only_real_steps():
    model = _chain()
    data, padded = _padded_pair()
    a = pv.evaluate_points(model, data, iw_samples=None, elbo_samples=2, seed=0, prior_samples=0)
    b = pv.evaluate_points(model, padded, iw_samples=None, elbo_samples=2, seed=0, prior_samples=0)
    assert a.reconstruction_mse is not None
    assert torch.allclose(torch.as_tensor(a.reconstruction_mse), torch.as_tensor(b.reconstruction_mse),
                          rtol=1e-5, atol=1e-6)
    # and it is the mean over the real steps: the one-step sequence's error is over its 3 numbers only
    assert torch.isfinite(torch.as_tensor(a.reconstruction_mse)).all()


def test_sequence_draws_scatter_around_the_means_by_the_likelihoods_scale():
    from pyro_vae.app.sequences import emit

    model = _chain(x_dim=2)
    torch.manual_seed(3)
    with torch.no_grad():
        z = torch.randn(1, 4, 2).expand(4000, 4, 2)
        mean = emit(model, z)
        x = emit(model, z, draws=True)
        scale = model.likelihood(model.emitters[model.obs_site]({model.chain: z[:1]})).base_dist.scale[0]
    assert x.shape == mean.shape == (4000, 4, 2)
    n = x.shape[0]
    # the sample mean within 4 s.e. of the law's mean, the sample sd within 4 s.e. (sd / sqrt(2n)) of its sd
    assert bool(((x.mean(0) - mean[0]).abs() < 4 * scale / n ** 0.5).all())
    assert bool(((x.std(0) - scale).abs() < 4 * scale / (2 * n) ** 0.5).all())
