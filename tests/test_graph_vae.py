"""The one-latent graph z -> x compiles to the same Pyro program as the built-in VAE of the short [model] form.

The VAE is the model the rest of the suite checks against closed forms (pPCA, conjugate models); a graph
with the same networks and weights must give the same per-point ELBO and log p(x), and train the same.
"""

from __future__ import annotations

import pytest
import torch
import pyro

import pyro_vae as pv
from pyro_vae.config import ModelConfig, NetConfig, NodeConfig, TrainConfig

D, LATENT = 6, 3


def _pair(likelihood: str):
    net = NetConfig((8,))
    vae = pv.build_model(ModelConfig(latent_dim=LATENT, likelihood=likelihood, encoder=net, decoder=net), D)
    graph = pv.build_model(ModelConfig(nodes={
        "z": NodeConfig(dim=LATENT, encoder=net),
        "x": NodeConfig(role="observed", likelihood=likelihood, parents=("z",), net=net)}), D)
    # the same weights under the graph's names: encoder -> encoders.z, decoder -> nets.x, likelihood -> likelihoods.x
    names = {"encoder.net.": "encoders.z.mlp.", "decoder.": "nets.x.mlp.", "likelihood.": "likelihoods.x.",
             "prior.": "families.z.prior_"}
    state = {}
    for k, v in vae.state_dict().items():
        prefix = next(p for p in names if k.startswith(p))
        state[names[prefix] + k[len(prefix):]] = v
    graph.load_state_dict(state, strict=True)
    return vae, graph


def _data(likelihood: str, n: int = 48):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, D, generator=g)
    return (x > 0).float() if likelihood == "bernoulli" else x


@pytest.mark.parametrize("likelihood", ["bernoulli", "normal"])
def test_same_weights_same_numbers(likelihood):
    vae, graph = _pair(likelihood)
    x = _data(likelihood)
    a = pv.evaluate_points(vae, x, iw_samples=50, seed=3)
    b = pv.evaluate_points(graph, x, iw_samples=50, seed=3)
    for field in ("elbo", "reconstruction", "kl", "log_likelihood"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-5, atol=1e-5, msg=field)


@pytest.mark.parametrize("likelihood", ["bernoulli", "normal"])
def test_same_weights_train_the_same(likelihood):
    x = _data(likelihood, 64)
    histories = []
    for which in (0, 1):
        pyro.set_rng_seed(0)
        model = _pair(likelihood)[which]
        trainer = pv.fit(model, x, x[:16], TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=5))
        histories.append([h["train_loss"] for h in trainer.state.history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)
