"""The lowrank and fullrank guide laws: their densities, every objective around them, and their errors in one line."""

from __future__ import annotations

import warnings

import pytest
import torch
import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.config import ModelConfig, NetConfig, NodeConfig, TrainConfig
from pyro_vae.errors import MonteCarloKLWarning, PyroVAEError
from pyro_vae.models.graph.guides import GUIDE_LAWS, MIN_SCALE

D, LATENT = 6, 3
NET = NetConfig((8,))


def _data(n=48):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, D, generator=g) > 0).float()


def _fit(spec, elbo, x, **train):
    pyro.set_rng_seed(0)
    model = pv.build_model(spec, D)
    trainer = pv.fit(model, x, x[:16], TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=5, elbo=elbo, **train),
                     progress=False)
    return model, trainer


def test_fullrank_law_is_the_cholesky_its_outputs_name():
    law = GUIDE_LAWS["fullrank"]
    out = torch.cat([torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, -0.2]]), torch.tensor([[0.7]])], -1)
    q = law.law(out, 2)
    sp = torch.nn.functional.softplus
    tril = torch.tensor([[sp(torch.tensor(0.3)) + MIN_SCALE, 0.0], [0.7, sp(torch.tensor(-0.2)) + MIN_SCALE]])
    z = torch.tensor([[0.1, 0.2]])
    expected = dist.MultivariateNormal(torch.tensor([0.5, -1.0]), scale_tril=tril).log_prob(z)
    assert law.features(2) == out.shape[-1]
    assert torch.allclose(q.log_prob(z), expected)


@pytest.mark.parametrize("name", ["normal", "lowrank", "fullrank"])
def test_warm_start_gives_the_diagonal_gaussian_it_is_asked_for(name):
    node = NodeConfig(dim=4, guide=name, rank=2 if name == "lowrank" else None)
    law = GUIDE_LAWS[name].for_node(node)
    loc, scale = torch.tensor([[0.1, -2.0, 3.0, 0.0]]), torch.tensor([[0.5, 1.0, 2.0, 0.05]])
    q = law.law(law.warm_start(loc, scale), 4)
    assert torch.allclose(q.mean, loc)
    assert torch.allclose(q.variance, scale ** 2, rtol=1e-3)
    assert law.warm_start(loc, scale).shape[-1] == law.features(4)


@pytest.mark.parametrize("guide, rank", [("lowrank", 2), ("fullrank", None)])
@pytest.mark.parametrize("elbo", ["trace", "iwae", "meanfield"])
def test_each_objective_trains_the_gaussian_guides(guide, rank, elbo):
    x = _data()
    spec = ModelConfig(latent_dim=LATENT, encoder=NET, decoder=NET, guide=guide, rank=rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, trainer = _fit(spec, elbo, x, num_particles=2 if elbo == "iwae" else 1)
    losses = [h["train_loss"] for h in trainer.state.history]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    q = model.families["z"].guide(model.encoders["z"]({"x": x[:3]}))
    assert isinstance(q, dist.LowRankMultivariateNormal if guide == "lowrank" else dist.MultivariateNormal)
    said = [w for w in caught if issubclass(w.category, MonteCarloKLWarning)]
    # no closed-form KL of a correlated q against N(0, I) in torch: Monte Carlo, said once for the run
    assert len(said) == (1 if elbo == "meanfield" else 0), [str(w.message) for w in said]


def test_fullrank_next_to_an_enumerated_class():
    x = _data()
    spec = ModelConfig(nodes={
        "y": NodeConfig(family="categorical", dim=3, encoder=NET),
        "z": NodeConfig(dim=LATENT, encoder=NET, guide="fullrank", parents=()),
        "x": NodeConfig(role="observed", parents=("y", "z"), net=NET)})
    model, trainer = _fit(spec, "enum", x)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in trainer.state.history)


@pytest.mark.parametrize("options, words", [
    (dict(guide="lowrank", rank=3), "model.rank: rank = 3 is not below the latent's dim = 3"),
    (dict(guide="lowrank", latent_dim=1), "model.rank: rank = 1 is not below the latent's dim = 1"),
    (dict(guide="lowrank", rank=0), "model.rank: must be >= 1"),
    (dict(guide="delta", rank=1), "read by guide = \"lowrank\" only"),
    (dict(guide="fullrank", rank=1), "remove rank"),
])
def test_rank_errors_are_one_line(options, words):
    with pytest.raises(PyroVAEError, match=None) as e:
        pv.build_model(ModelConfig(**dict(dict(latent_dim=LATENT, encoder=NET, decoder=NET), **options)), D)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_correlated_guide_on_a_discrete_node_is_one_line():
    spec = ModelConfig(nodes={"y": NodeConfig(family="categorical", dim=3, guide="fullrank"),
                              "x": NodeConfig(role="observed", parents=("y",))})
    with pytest.raises(PyroVAEError, match="model.nodes.y.guide = 'fullrank': a guide law is for a continuous latent"):
        pv.build_model(spec, D)


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def test_a_lowrank_run_resumes_bit_for_bit_loads_and_samples(tmp_path, capsys):
    from pyro_vae.cli import main

    common = ["--quiet", "--no-plots", "--iw-samples", "10", "--set", "model.guide=\"lowrank\"",
              "--set", "data.source=\"synthetic\"", "--set", "data.num_points=200", "--set", "data.synthetic_dim=6",
              "--set", "model.likelihood=\"normal\"",
              "--set", "model.rank=2", "--set", "model.latent_dim=3", "--set", "model.encoder.hidden=[16]",
              "--set", "model.decoder.hidden=[16]", "--set", "train.elbo=\"trace\""]
    halves, straight = tmp_path / "halves", tmp_path / "straight"
    assert main(["train", "--out", str(halves), "--set", "train.epochs=1", *common]) == 0
    assert main(["train", "--resume", str(halves), "--set", "train.epochs=2", "--quiet", "--no-plots",
                 "--iw-samples", "10"]) == 0
    assert main(["train", "--out", str(straight), "--set", "train.epochs=2", *common]) == 0
    a = torch.load(halves / "checkpoint.pt", weights_only=True)
    b = torch.load(straight / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer", "rng"):
        assert _same(a[key], b[key]), key
    run = pv.load_run(halves)  # config.toml keeps the rank: the same law is rebuilt, on the CPU
    assert run.model.families["z"].guide_law.rank == 2
    assert main(["sample", str(halves), "-n", "4", "--out", str(tmp_path / "s.npy")]) == 0
