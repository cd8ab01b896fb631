"""The path-derivative objective (train.elbo = "stl"): zero gradient at the exact posterior, unbiased elsewhere.

The exact posteriors are closed forms computed here (conjugate Gaussians); the
unbiasedness check compares the mean of many STL gradients with the mean of as
many Trace_ELBO gradients (independent draws) within 3.5 standard errors.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn

from pyro_vae.errors import PyroVAEError
from pyro_vae.infer.objectives import make_objective

from pyro_vae.cli import main
from pyro_vae.models import build_model

from test_capture import assert_same_training, data_for, recorded, spec, train
from test_flow_guides import D, _data, _small, _toml

NOISE, A = 0.7, 0.8


class Chain(nn.Module):
    """z1 ~ N(0, 1), z2 | z1 ~ N(A z1, 1), x | z2 ~ N(z2, NOISE^2); guide q(z1 | x) q(z2 | z1, x), both Normal.

    ``rows`` > 1 gives every data row its own copy of the guide's parameters (all equal): row i's gradient is
    then that copy's, one independent draw each, from a single backward pass."""

    latent_sites = ("z1", "z2")
    obs_site = "x"

    def __init__(self, rows: int = 1):
        super().__init__()
        ones = torch.ones(rows, 1)
        self.c = nn.Parameter(ones * torch.tensor([0.3, 0.2]))      # loc's weight on x, per step
        self.m = nn.Parameter(ones * torch.tensor([0.1, -0.2]))     # loc's offset, per step
        self.k = nn.Parameter(ones[:, 0] * 0.1)                     # z2's loc's weight on z1
        self.log_s = nn.Parameter(ones * torch.tensor([-0.3, -0.5]))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(()), 1.0))
            z2 = pyro.sample("z2", dist.Normal(A * z1, 1.0))
            pyro.sample("x", dist.Normal(z2, NOISE), obs=x)

    def guide(self, x):
        s = self.log_s.exp()
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(self.c[:, 0] * x + self.m[:, 0], s[:, 0]))
            pyro.sample("z2", dist.Normal(self.c[:, 1] * x + self.k * z1 + self.m[:, 1], s[:, 1]))

    def set_exact(self):
        """q = p(z1, z2 | x): precision L = prior's + likelihood's; mean L^-1 (0, x / NOISE^2)."""
        lam = torch.tensor([[1 + A ** 2, -A], [-A, 1 + NOISE ** -2]], dtype=torch.float64)
        v = torch.linalg.solve(lam, torch.tensor([0.0, NOISE ** -2], dtype=torch.float64))  # mean = v x
        var1 = torch.linalg.inv(lam)[0, 0]
        k = -lam[1, 0] / lam[1, 1]                     # z2 | z1, x: mean v2 x + k (z1 - v1 x), var 1 / L22
        with torch.no_grad():
            self.c.copy_(torch.stack([v[0], v[1] - k * v[0]]).float().expand_as(self.c))
            self.m.zero_()
            self.k.fill_(float(k))
            self.log_s.copy_(torch.stack([var1.sqrt().log(), -0.5 * lam[1, 1].log()]).float().expand_as(self.log_s))
        return self


class PPCA(nn.Module):
    """z ~ N(0, I_2), x ~ N(W z, NOISE^2 I_3) at a fixed W with orthogonal columns (so the posterior is diagonal),
    the guide's law one of Normal, MultivariateNormal, LowRankMultivariateNormal, loc = x B + b."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, law):
        super().__init__()
        self.law = law
        self.register_buffer("W", torch.tensor([[1.0, 0.5], [1.0, -1.0], [-1.0, -0.5]]))  # columns orthogonal
        self.B = nn.Parameter(0.1 * torch.ones(3, 2))
        self.b = nn.Parameter(torch.zeros(2))
        self.log_s = nn.Parameter(torch.zeros(2))
        self.factor = nn.Parameter(torch.zeros(2, 1))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, NOISE).to_event(1), obs=x)

    def guide(self, x):
        loc, s = x @ self.B + self.b, self.log_s.exp()
        with pyro.plate("data", x.shape[0]):
            if self.law == "normal":
                law = dist.Normal(loc, s).to_event(1)
            elif self.law == "mvn":
                law = dist.MultivariateNormal(loc, scale_tril=torch.diag(s) + torch.tril(self.factor @ self.factor.T, -1))
            else:
                law = dist.LowRankMultivariateNormal(loc, self.factor, s ** 2)
            pyro.sample("z", law)

    def set_exact(self):
        """q = N(S W^T x / NOISE^2, S), S = (I + W^T W / NOISE^2)^-1 (diagonal: W's columns are orthogonal)."""
        W = self.W.double()
        S = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ W / NOISE ** 2)
        assert float(S[0, 1].abs()) < 1e-12
        with torch.no_grad():
            self.B.copy_((W @ S / NOISE ** 2).float())
            self.b.zero_()
            self.log_s.copy_(torch.diagonal(S).sqrt().log().float())
            self.factor.zero_()
        return self


def _x(n=8, dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g).squeeze(-1) * 1.5 if dim == 1 else torch.randn(n, dim, generator=g) * 1.5


def _grads(name, m, x, seed, particles=1):
    pyro.set_rng_seed(seed)
    objective = make_objective(name, particles)
    loss = objective.differentiable_loss(m.model, m.guide, x=x)
    params = [p for p in m.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                     for g, p in zip(grads, params)])


CASES = [("chain", lambda: Chain(), _x()), ("normal", lambda: PPCA("normal"), _x(dim=3)),
         ("mvn", lambda: PPCA("mvn"), _x(dim=3)), ("lowrank", lambda: PPCA("lowrank"), _x(dim=3))]


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("case, make, x", CASES, ids=[c[0] for c in CASES])
def test_stl_gradient_is_zero_at_the_exact_posterior_for_every_draw(case, make, x, particles):
    m = make().set_exact()
    largest_trace = 0.0
    for seed in range(5):
        _, stl = _grads("stl", m, x, seed, particles)
        _, trace = _grads("trace", m, x, seed, particles)
        assert float(stl.abs().max()) < 1e-4, (seed, stl)
        largest_trace = max(largest_trace, float(trace.abs().max()))
    assert largest_trace > 0.1  # the score term: what STL drops


@pytest.mark.parametrize("case, make, x", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_stl_loss_value_is_trace_elbo_on_the_same_draws(case, make, x):
    m = make()
    for seed in range(3):
        for particles in (1, 4):
            assert torch.equal(_grads("stl", m, x, seed, particles)[0], _grads("trace", m, x, seed, particles)[0])


def _row_grads(name, m, x, seed):
    """(rows, parameters): each row's gradient, its own draw (Chain(rows))."""
    pyro.set_rng_seed(seed)
    loss = make_objective(name).differentiable_loss(m.model, m.guide, x=x)
    return torch.cat([g.reshape(len(x), -1) for g in torch.autograd.grad(loss, list(m.parameters()))], 1).double()


def test_stl_mean_gradient_equals_trace_elbo_mean_gradient_away_from_the_optimum():
    """Per coordinate, the means of 20000 independent draws (one x) differ by < 3.5 s.e. of their difference.
    Detaching each site's law alone would drop z1's path through z2's loc, biasing z1's parameters' gradients."""
    n = 20000
    m, x = Chain(rows=n), torch.full((n,), 1.5)
    stl, trace = _row_grads("stl", m, x, 0), _row_grads("trace", m, x, 1)
    diff = stl.mean(0) - trace.mean(0)
    se = (stl.var(0) / n + trace.var(0) / n).sqrt()
    assert bool((diff.abs() < 3.5 * se).all()), (diff / se)
    assert bool((trace.mean(0).abs() > 4 * se).all())  # no coordinate's gradient is zero: the check has power
    assert bool((stl.var(0) < trace.var(0)).any())


class FlowGuide(PPCA):
    def __init__(self):
        super().__init__("normal")
        self.flow = AffineAutoregressive(AutoRegressiveNN(2, [4]))

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.TransformedDistribution(dist.Normal(x @ self.B, 1.0).to_event(1), [self.flow]))


class ScoreGuide(PPCA):
    def __init__(self):
        super().__init__("normal")

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.VonMises(x @ self.B, 1.0).to_event(1))


class ParamStoreGuide(PPCA):
    def __init__(self):
        super().__init__("normal")

    def guide(self, x):
        loc = pyro.param("stl_test_loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + x @ self.B, 1.0).to_event(1))


@pytest.mark.parametrize("make, words", [(FlowGuide, "is a flow"), (ScoreGuide, "no reparameterized sampler"),
                                         (ParamStoreGuide, "could not detach")])
def test_stl_refuses_what_it_cannot_detach_and_names_trace(make, words):
    pyro.clear_param_store()
    with pytest.raises(PyroVAEError, match=words) as info:
        make_objective("stl").prepare(make(), {"x": _x(dim=3)})
    assert "train.elbo = 'trace'" in str(info.value)
    pyro.clear_param_store()


@pytest.mark.parametrize("particles", [1, 3])
def test_stl_training_is_captured_and_equals_eager_training(particles):
    """A built-in model under train.elbo = 'stl': recorded once per batch shape, the replay's training equal to
    eager training's (the capture check's tolerance), and the ELBO going up."""
    s, x = spec(likelihood="normal"), data_for("normal")
    a = train(s, x, "auto", elbo="stl", num_particles=particles)
    b = train(s, x, "off", elbo="stl", num_particles=particles)
    assert recorded(a) == 2 and recorded(b) == 0
    assert_same_training(a, b)


def test_stl_validated_step_and_lean_step_give_the_same_gradients_bit_for_bit():
    """A resumed run validates its first step (Pyro's traces) where a straight run takes the lean path."""
    x = _data(40)
    torch.manual_seed(0)
    model = build_model(_small(prior="flow", flows=2), D)
    objective = make_objective("stl", 2)
    objective.prepare(model, {"x": x})

    def grads(validate: bool):
        torch.manual_seed(5)
        model.zero_grad(set_to_none=True)
        with pyro.validation_enabled(validate):
            objective.differentiable_loss(model.model, model.guide, x=x).backward()
        return [p.grad.clone() for p in model.parameters()]

    grads(False)  # the first call guesses the particles' plate nesting, which draws from the stream
    assert all(torch.equal(u, v) for u, v in zip(grads(True), grads(False)))


def test_the_cli_refuses_stl_for_a_flow_guide_in_one_line_and_writes_nothing(tmp_path, capsys):
    cfg = _toml(tmp_path, "iaf")
    out = tmp_path / "run"
    assert main(["train", cfg, "--out", str(out), "--quiet", "--no-plots", "--set", "train.elbo=\"stl\""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a flow" in err[0] and "train.elbo = 'trace'" in err[0], err
    assert not out.exists()
