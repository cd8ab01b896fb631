"""The core: every likelihood/prior/guide/objective builds a real Pyro model and guide and trains."""

import math

import pytest
import torch
import pyro
from pyro import poutine

import pyro_vae as pv
from pyro_vae.infer.objectives import IWAE_ELBO, scale_sites

from one_latent import decoder, decoder_net

SMALL = {"hidden": [16]}


def _cfg(**model):
    base = {"latent_dim": 2, "encoder": SMALL, "decoder": SMALL}
    base.update(model)
    return pv.config_from_dict({"model": base}).model


def _data_for(likelihood, n=96, d=6, levels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((n, d), 0.3), generator=g)
    if likelihood == "continuous_bernoulli":
        return torch.rand(n, d, generator=g)
    if likelihood == "categorical":
        return torch.randint(0, levels, (n, d), generator=g).float()
    return torch.randn(n, d, generator=g)


CASES = [
    dict(likelihood="normal", scale=0.5),
    dict(likelihood="normal", scale="learned"),
    dict(likelihood="normal", scale="learned_isotropic"),
    dict(likelihood="normal", scale="amortized"),
    dict(likelihood="laplace", scale="learned"),
    dict(likelihood="bernoulli"),
    dict(likelihood="continuous_bernoulli"),
    dict(likelihood="categorical", levels=5),
    dict(likelihood="normal", prior="laplace"),
    dict(likelihood="normal", guide="delta"),
    dict(likelihood="bernoulli", guide="normal", prior="laplace"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_each_likelihood_prior_guide_builds_and_trains(case):
    spec = _cfg(**case)
    x = _data_for(case["likelihood"])
    pyro.set_rng_seed(0)
    model = pv.build_model(spec, x.shape[1])
    # a real Pyro program: the trace has the latent and the observed site
    tr = poutine.trace(model.model).get_trace(x)
    assert tr.nodes["z"]["fn"].event_shape == (2,)
    assert tr.nodes["x"]["is_observed"]
    gtr = poutine.trace(model.guide).get_trace(x)
    assert gtr.nodes["z"]["value"].shape == (x.shape[0], 2)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pv.fit(model, x, x[:16], pv.TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu"))
    hist = trainer.state.history
    assert len(hist) == 2 and all(math.isfinite(h["train_loss"]) for h in hist)
    assert all(math.isfinite(h["test_elbo"]) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "parameters did not move"
    z = model.encode(x[:5])
    assert z.shape == (5, 2)
    m = model.decode(z)
    assert m.shape == (5, x.shape[1])


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
@pytest.mark.parametrize("particles", [1, 3])
def test_objectives_train(elbo, particles):
    x = _data_for("normal")
    pyro.set_rng_seed(0)
    model = pv.build_model(_cfg(likelihood="normal"), x.shape[1])
    cfg = pv.TrainConfig(elbo=elbo, num_particles=particles, epochs=3, batch_size=32, lr=1e-2, device="cpu")
    def per_point_elbo():  # the same points and draws (seed) before and after: a paired comparison
        return pv.evaluate_points(model, x, iw_samples=None, elbo_samples=4, seed=5, prior_samples=0,
                                  reconstruction_error=False).elbo

    before = per_point_elbo()
    pv.fit(model, x, x, cfg)
    gain = per_point_elbo() - before
    # training improved the ELBO by more than four standard errors of the paired per-point gain
    assert float(gain.mean()) > 4 * float(gain.std()) / math.sqrt(len(gain))


def test_minibatch_loss_estimates_the_full_data_loss():
    """With the data plate subsampled, the average minibatch loss equals the full-data loss."""
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    model = pv.build_model(_cfg(likelihood="normal", guide="delta"), 4)  # delta guide: no sampling noise
    trainer = pv.Trainer(model, pv.TrainConfig(elbo="trace", batch_size=16, device="cpu"))
    trainer.setup(x, data_size=64)
    full = float(trainer.objective.differentiable_loss(model.model, model.guide, x).detach())
    parts = [float(trainer.loss(x[i : i + 16]).detach()) for i in range(0, 64, 16)]
    assert sum(parts) / 4 == pytest.approx(full, rel=1e-5)


def test_iwae_loss_matches_pyro_renyi_and_scales_outside():
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    model = pv.build_model(_cfg(likelihood="normal"), 4)
    ours = IWAE_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    ref = pyro.infer.RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(1)
    a = float(ours.differentiable_loss(model.model, model.guide, x).detach())
    pyro.set_rng_seed(1)
    b = ref.loss(model.model, model.guide, x)
    assert a == pytest.approx(b, rel=1e-5)
    # the trainer multiplies by N/B after the log-mean-exp
    trainer = pv.Trainer(model, pv.TrainConfig(elbo="iwae", num_particles=5, device="cpu"))
    trainer.setup(x, data_size=320)
    pyro.set_rng_seed(1)
    assert float(trainer.loss(x).detach()) == pytest.approx(10 * b, rel=1e-5)


def test_beta_scales_only_latent_sites():
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    model = pv.build_model(_cfg(likelihood="normal", guide="delta"), 3)
    with poutine.trace() as tr, scale_sites(model.latent_sites, 0.25):
        model.model(x)
    assert tr.trace.nodes["z"]["scale"] == 0.25
    assert tr.trace.nodes["x"]["scale"] == 1.0


def test_kl_warmup_is_linear():
    model = pv.build_model(_cfg(likelihood="normal"), 3)
    t = pv.Trainer(model, pv.TrainConfig(beta=2.0, kl_warmup_epochs=4, device="cpu"))
    assert [t.beta_at(e) for e in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]


def test_constructor_has_no_global_side_effects():
    pyro.get_param_store()["keep_me"] = torch.ones(1)
    pv.build_model(_cfg(), 5)
    pv.Trainer(pv.build_model(_cfg(), 5), pv.TrainConfig())
    assert "keep_me" in pyro.get_param_store()
    # no reseeding: two builds in a row draw different initial weights
    a, b = pv.build_model(_cfg(), 5), pv.build_model(_cfg(), 5)
    assert not torch.equal(decoder_net(a)[0].weight, decoder_net(b)[0].weight)


def test_bernoulli_on_fractional_data_suggests_the_fix():
    lik = pv.LIKELIHOODS["bernoulli"](3)
    with pytest.raises(pv.PyroVAEError, match="continuous_bernoulli.*|binarize"):
        lik.check_support(torch.tensor([[0.0, 0.5, 1.0]]))


def test_categorical_support():
    lik = pv.LIKELIHOODS["categorical"](2, levels=3)
    lik.check_support(torch.tensor([[0.0, 2.0]]))
    with pytest.raises(pv.PyroVAEError, match="integers 0..2"):
        lik.check_support(torch.tensor([[0.0, 3.0]]))
    with pytest.raises(pv.PyroVAEError, match="integers 0..2"):
        lik.check_support(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(pv.PyroVAEError, match="integers 0..2"):
        lik.check_support(torch.tensor([[-1.0, 1.0]]))


def test_decode_is_the_likelihood_mean():
    x = _data_for("categorical")
    model = pv.build_model(_cfg(likelihood="categorical", levels=5), x.shape[1])
    z = torch.randn(4, 2)
    out = decoder(model)(z)
    d = model.likelihood(out)
    expected = (d.base_dist.probs * torch.arange(5.0)).sum(-1)
    assert torch.allclose(model.decode(z), expected, atol=1e-6)


def test_train_pipeline_and_load_run_round_trip(tmp_path):
    cfg = pv.config_from_dict({
        "data": {"source": "synthetic", "num_points": 200},
        "model": {"latent_dim": 2, "likelihood": "normal", "encoder": SMALL, "decoder": SMALL},
        "train": {"epochs": 2, "batch_size": 50, "device": "cpu"},
    })
    run = pv.train(cfg, tmp_path / "run", iw_samples=20, progress=False)
    for name in ("config.toml", "checkpoint.pt", "history.csv", "metrics.json"):
        assert (tmp_path / "run" / name).exists(), name
    for name in ("loss.png", "reconstructions.png", "samples.png", "latent.png"):
        assert (tmp_path / "run" / "plots" / name).stat().st_size > 1000, name
    loaded = pv.load_run(tmp_path / "run")
    assert loaded.config == run.config
    for (n1, a), (n2, b) in zip(run.model.state_dict().items(), loaded.model.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b)
    x = run.data.test
    assert torch.equal(run.model.encode(x), loaded.model.encode(x))
    again = pv.evaluate(loaded.model, x, iw_samples=20, seed=cfg.train.seed)
    assert again["log_likelihood"] == pytest.approx(run.metrics["log_likelihood"], abs=1e-9)
