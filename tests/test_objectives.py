"""Objectives that are right for the program: enumerated discrete latents, and the analytic KL only where exact.

Every expected value is a closed form computed here by hand (Gaussian
expectations and an explicit sum over the discrete values); Monte Carlo
estimates are compared with it within 4 standard errors.
"""

import math
import warnings

import pytest
import torch
import pyro
import pyro.distributions as dist
from torch import nn

import pyro_vae as pv
from pyro_vae.errors import MonteCarloKLWarning

LOG_2PI = math.log(2 * math.pi)


def _loss_mean_and_se(trainer, x, repeats: int):
    """The trainer's loss on ``x`` repeated on fresh draws: its mean and the standard error of that mean."""
    values = torch.stack([trainer.loss(x).detach().double() for _ in range(repeats)])  # (enum needs grad mode)
    return float(values.mean()), float(values.std() / math.sqrt(repeats))


# -- a mixture with a discrete latent: c ~ Cat(pi), z ~ N(0, I), x ~ N(W_c z + mu_c, s^2 I) ----------------

K, DX, DZ, NOISE = 3, 3, 2, 0.5


class Mixture(nn.Module):
    latent_sites = ("c", "z")
    obs_site = "x"

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logit_pi = nn.Parameter(torch.randn(K, generator=g))
        self.W = nn.Parameter(torch.randn(K, DX, DZ, generator=g))
        self.mu = nn.Parameter(2 * torch.randn(K, DX, generator=g))
        self.A = nn.Parameter(torch.randn(DX, K, generator=g))
        self.B = nn.Parameter(0.3 * torch.randn(DX, DZ, generator=g))
        self.m = nn.Parameter(torch.randn(K, DZ, generator=g))
        self.log_sq = nn.Parameter(torch.full((DZ,), -1.0))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.logit_pi))
            z = pyro.sample("z", dist.Normal(torch.zeros(DZ), 1.0).to_event(1))
            loc = (self.W[c] @ z.unsqueeze(-1)).squeeze(-1) + self.mu[c]
            pyro.sample("x", dist.Normal(loc, NOISE).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x @ self.A))
            pyro.sample("z", dist.Normal(x @ self.B + self.m[c], self.log_sq.exp()).to_event(1))


@torch.no_grad()
def mixture_elbo(m: Mixture, x) -> float:
    """sum_c q(c|x) [E_q(z|x,c) log p(x|z,c) - KL(q(z|x,c) || p(z)) + log p(c) - log q(c|x)], summed over points."""
    log_qc = torch.log_softmax(x @ m.A, -1)
    log_pc = torch.log_softmax(m.logit_pi, -1)
    var = m.log_sq.exp() ** 2
    total = torch.zeros(x.shape[0])
    for c in range(K):
        mz = x @ m.B + m.m[c]
        resid = x - mz @ m.W[c].T - m.mu[c]
        rec = -DX / 2 * math.log(2 * math.pi * NOISE**2) - ((resid**2).sum(-1) + (m.W[c] ** 2 * var).sum()) / (2 * NOISE**2)
        kl_z = 0.5 * (var.sum() + (mz**2).sum(-1) - DZ - var.log().sum())
        total += log_qc[:, c].exp() * (rec - kl_z + log_pc[c] - log_qc[:, c])
    return float(total.sum())


def mixture_data(n=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    truth = Mixture(seed=7)
    c = torch.randint(0, K, (n,), generator=g)
    z = torch.randn(n, DZ, generator=g)
    with torch.no_grad():
        return (truth.W[c] @ z.unsqueeze(-1)).squeeze(-1) + truth.mu[c] + NOISE * torch.randn(n, DX, generator=g)


def test_enum_trains_a_mixture_and_its_loss_is_the_exact_sum_over_the_discrete_values():
    x = mixture_data()
    model = Mixture()
    before = mixture_elbo(model, x)
    cfg = pv.TrainConfig(elbo="enum", epochs=15, batch_size=20, lr=0.05, device="cpu", seed=0, capture="off")
    pv.fit(model, x, config=cfg, progress=False)
    after = mixture_elbo(model, x)
    assert after > before + 10  # it learned: the exact ELBO rose
    # the trainer's loss (minus the ELBO, summed over the points) with many z draws, vs the exact sum over c
    check = pv.Trainer(model, pv.TrainConfig(elbo="enum", num_particles=500, device="cpu", capture="off"))
    check.setup(x, x.shape[0])
    mean, se = _loss_mean_and_se(check, x, repeats=8)
    assert abs(mean - (-after)) < 4 * se + 1e-3 * abs(after), (mean, -after, se)


def test_enum_with_beta_weights_the_kl_of_discrete_and_continuous_sites():
    x, model, beta = mixture_data(n=20), Mixture(), 0.5
    trainer = pv.Trainer(model, pv.TrainConfig(elbo="enum", num_particles=500, beta=beta, device="cpu"))
    trainer.setup(x, x.shape[0])
    values = torch.stack([trainer.loss(x, beta).detach().double() for _ in range(8)])
    # beta-weighted: E_q[log p(x|z,c)] - beta KL(q(c,z|x) || p(c,z)), from the two closed forms
    rec_plus_kl = mixture_elbo(model, x)
    with torch.no_grad():
        kl = _mixture_kl(model, x)
    expected = -(rec_plus_kl + kl - beta * kl)
    assert abs(float(values.mean()) - expected) < 4 * float(values.std() / math.sqrt(8)) + 1e-3 * abs(expected)


def _mixture_kl(m, x) -> float:
    log_qc = torch.log_softmax(x @ m.A, -1)
    log_pc = torch.log_softmax(m.logit_pi, -1)
    var = m.log_sq.exp() ** 2
    total = 0.0
    for c in range(K):
        mz = x @ m.B + m.m[c]
        kl_z = 0.5 * (var.sum() + (mz**2).sum(-1) - DZ - var.log().sum())
        total = total + (log_qc[:, c].exp() * (kl_z + log_qc[:, c] - log_pc[c])).sum()
    return float(total)


def test_enum_refuses_step_capture_cleanly():
    x = mixture_data(n=20)
    cfg = pv.TrainConfig(elbo="enum", epochs=1, batch_size=10, device="cpu", capture="on")
    with pytest.warns(pv.CaptureWarning, match="enum"):
        trainer = pv.fit(Mixture(), x, config=cfg, progress=False, validation="first")
    assert trainer.engine_name == "eager"
    assert math.isfinite(trainer.state.history[-1]["train_loss"])


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_a_discrete_guide_site_under_a_sampling_objective_fails_before_training(elbo):
    model = Mixture()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = pv.TrainConfig(elbo=elbo, epochs=1, batch_size=10, device="cpu")
    with pytest.raises(pv.PyroVAEError, match=r"guide site 'c' is discrete .*train\.elbo = 'enum'") as err:
        pv.fit(model, mixture_data(n=20), config=cfg, progress=False)
    assert "\n" not in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


class _WrongSignature(Mixture):
    def model(self, x, labels):  # a second required argument the trainer does not pass
        return super().model(x)


def test_a_first_batch_failure_names_the_cause_seen():
    cfg = pv.TrainConfig(elbo="enum", epochs=1, batch_size=10, device="cpu")
    with pytest.raises(pv.PyroVAEError, match="fails on its first batch .*signature") as err:
        pv.fit(_WrongSignature(), mixture_data(n=20), config=cfg, progress=False)
    assert "likely causes" not in str(err.value)


# -- a two-level linear-Gaussian hierarchy: z2 ~ N(0,1), z1 | z2 ~ N(a z2, s1^2), x | z1 ~ N(w z1, s^2 I) ------

A, S1, S = 0.8, 0.5, 0.6
W = torch.tensor([1.0, -0.5])


class Hierarchy(nn.Module):
    """Guide q(z1 | x) q(z2 | z1, x): structured (z2 drawn given z1) when g != 0, mean-field when g == 0.

    Its parameters are fixed and deliberately imperfect, so the ELBO is well below log p(x).
    """

    latent_sites = ("z1", "z2")
    obs_site = "x"

    def __init__(self, g: float):
        super().__init__()
        self.u = nn.Parameter(torch.tensor([0.5, -0.2]))
        self.c1 = nn.Parameter(torch.tensor(0.1))
        self.log_t1 = nn.Parameter(torch.tensor(math.log(0.7)))
        self.structured = g != 0
        self.g = nn.Parameter(torch.tensor(g))
        self.h = nn.Parameter(torch.tensor([0.0, 0.0]) if g else torch.tensor([0.3, 0.1]))
        self.c2 = nn.Parameter(torch.tensor(-0.2))
        self.log_t2 = nn.Parameter(torch.tensor(math.log(0.8)))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
            z1 = pyro.sample("z1", dist.Normal(A * z2, S1))
            pyro.sample("x", dist.Normal(z1.unsqueeze(-1) * W, S).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x @ self.u + self.c1, self.log_t1.exp()))
            loc = x @ self.h + self.c2
            if self.structured:  # else q(z2 | x) reads no latent: a mean-field guide
                loc = loc + self.g * z1
            pyro.sample("z2", dist.Normal(loc, self.log_t2.exp()))


@torch.no_grad()
def hierarchy_elbo(m: Hierarchy, x) -> float:
    """E_q[log p(x, z1, z2) - log q(z1, z2 | x)] in closed form (z2 = g z1 + h.x + c2 + t2 eps), summed over points."""
    t1, t2, g = m.log_t1.exp(), m.log_t2.exp(), m.g
    m1 = x @ m.u + m.c1
    m2 = g * m1 + x @ m.h + m.c2
    d = x.shape[1]
    log_lik = -d / 2 * math.log(2 * math.pi * S**2) - (((x - m1.unsqueeze(-1) * W) ** 2).sum(-1) + (W**2).sum() * t1**2) / (2 * S**2)
    log_p2 = -0.5 * LOG_2PI - (m2**2 + g**2 * t1**2 + t2**2) / 2
    diff_mean, diff_var = m1 - A * m2, (1 - A * g) ** 2 * t1**2 + A**2 * t2**2
    log_p1 = -0.5 * math.log(2 * math.pi * S1**2) - (diff_mean**2 + diff_var) / (2 * S1**2)
    entropy = 0.5 * (math.log(2 * math.pi) + 1) * 2 + t1.log() + t2.log()
    return float((log_lik + log_p2 + log_p1 + entropy).sum())


def hierarchy_data(n=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    z2 = torch.randn(n, generator=g)
    z1 = A * z2 + S1 * torch.randn(n, generator=g)
    return z1.unsqueeze(-1) * W + S * torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("g, method", [(0.6, "monte_carlo"), (0.0, "analytic")], ids=["structured", "mean-field"])
def test_evaluate_takes_the_analytic_kl_only_where_it_is_exact(g, method):
    x, model = hierarchy_data(), Hierarchy(g)
    exact = hierarchy_elbo(model, x) / x.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonteCarloKLWarning)  # evaluation says it in kl_method, not by warning
        m = pv.evaluate(model, x, iw_samples=None, elbo_samples=4000, prior_samples=0, seed=0)
    assert m["kl_method"] == method
    assert abs(m["elbo"] - exact) < 4 * m["elbo_se"], (m["elbo"], exact, m["elbo_se"])
    assert abs(m["reconstruction"] - m["kl"] - m["elbo"]) < 1e-9


def test_meanfield_training_loss_of_a_structured_guide_is_the_elbo_and_says_which_kl_is_monte_carlo():
    x, model = hierarchy_data(), Hierarchy(0.6)
    trainer = pv.Trainer(model, pv.TrainConfig(elbo="meanfield", num_particles=1000, device="cpu"))
    with pytest.warns(MonteCarloKLWarning, match=r"'z1' \(its prior reads 'z2', which the guide draws given 'z1'\)"):
        trainer.setup(x, x.shape[0])
    mean, se = _loss_mean_and_se(trainer, x, repeats=8)
    exact = hierarchy_elbo(model, x)
    assert abs(mean - (-exact)) < 4 * se, (mean, -exact, se)


def test_meanfield_training_loss_of_a_mean_field_guide_stays_analytic_and_matches():
    x, model = hierarchy_data(), Hierarchy(0.0)
    trainer = pv.Trainer(model, pv.TrainConfig(elbo="meanfield", num_particles=1000, device="cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonteCarloKLWarning)
        trainer.setup(x, x.shape[0])
    mean, se = _loss_mean_and_se(trainer, x, repeats=8)
    exact = hierarchy_elbo(model, x)
    assert abs(mean - (-exact)) < 4 * se, (mean, -exact, se)


# -- train.elbo = "auto", the default: the analytic KL where it is exact, else Monte Carlo, said once -------------


@pytest.mark.parametrize("g, chosen", [(0.6, "trace"), (0.0, "meanfield")], ids=["structured", "mean-field"])
def test_auto_takes_the_analytic_kl_only_where_exact_says_which_once_and_its_loss_is_the_elbo(g, chosen):
    x, model = hierarchy_data(), Hierarchy(g)
    said = []
    trainer = pv.Trainer(model, pv.TrainConfig(num_particles=1000, device="cpu"), log=said.append)
    assert trainer.config.elbo == "auto"  # the default
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonteCarloKLWarning)  # auto never mixes the two KLs, so never warns
        trainer.setup(x, x.shape[0])
    assert trainer.config.elbo == chosen and trainer.objective_choice.name == chosen
    assert len(said) == 1 and said[0].startswith("note: train.elbo = 'auto' chose "), said
    if chosen == "trace":
        assert "Trace_ELBO" in said[0] and "'z1' (its prior reads 'z2', which the guide draws given 'z1')" in said[0]
    else:
        assert "TraceMeanField_ELBO" in said[0] and "'z1', 'z2'" in said[0]
    mean, se = _loss_mean_and_se(trainer, x, repeats=8)
    exact = hierarchy_elbo(model, x)
    assert abs(mean - (-exact)) < 4 * se, (mean, -exact, se)


def test_auto_is_said_once_per_run_and_the_checkpoint_names_the_estimator_chosen(tmp_path):
    said = []
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        pv.fit(Hierarchy(0.6), hierarchy_data(), None, pv.TrainConfig(epochs=3, batch_size=10, device="cpu"),
               run_dir=tmp_path / "run", progress=False, log=said.append)
    assert len(said) == 1 and "Trace_ELBO" in said[0], said
    assert not [w for w in warned if issubclass(w.category, MonteCarloKLWarning)]
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["train_config"]["elbo"] == "trace"  # a resume trains on with what was chosen


def test_explicit_meanfield_keeps_its_mixed_kl_and_warns_once_per_run():
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        trainer = pv.fit(Hierarchy(0.6), hierarchy_data(), None,
                         pv.TrainConfig(elbo="meanfield", epochs=3, batch_size=10, device="cpu"), progress=False)
    mc = [w for w in warned if issubclass(w.category, MonteCarloKLWarning)]
    assert len(mc) == 1 and "'z1'" in str(mc[0].message)
    assert trainer.config.elbo == "meanfield" and trainer.objective_choice is None
    assert trainer.objective.monte_carlo_sites == {"z1"}  # z2's KL stays analytic


def test_auto_sums_a_discrete_latent_exactly():
    x = mixture_data(n=30)
    said = []
    trainer = pv.Trainer(Mixture(), pv.TrainConfig(num_particles=500, device="cpu"), log=said.append)
    trainer.setup(x, x.shape[0])
    assert trainer.config.elbo == "enum" and "'c' (discrete in the guide)" in said[0], said
    mean, se = _loss_mean_and_se(trainer, x, repeats=8)
    exact = mixture_elbo(trainer.model, x)
    assert abs(mean - (-exact)) < 4 * se, (mean, -exact, se)


class _HeavyPrior(nn.Module):
    """q(z | x) Normal under a Student-t prior (no KL in closed form), or drawn without reparameterization."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, reparameterized=True):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -0.2]))
        self.reparameterized = reparameterized

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.StudentT(4.0, 0.0, 1.0) if self.reparameterized else dist.Normal(0.0, 1.0)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * W, S).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            q = dist.Normal(x @ self.w, 0.5)
            if not self.reparameterized:
                q.has_rsample = False  # a sampler without reparameterization: score-function gradients
            pyro.sample("z", q)


@pytest.mark.parametrize("reparameterized, why", [
    (True, "'z' (no closed-form KL of Normal q against StudentT p)"),
    (False, "'z' (Normal has no reparameterized sampler (score-function gradients))"),
], ids=["no-closed-form-kl", "score-function"])
def test_auto_takes_monte_carlo_where_no_analytic_kl_applies(reparameterized, why):
    said = []
    trainer = pv.Trainer(_HeavyPrior(reparameterized), pv.TrainConfig(device="cpu"), log=said.append)
    trainer.setup(hierarchy_data(), 40)
    assert trainer.config.elbo == "trace" and why in said[0], said


def test_auto_is_a_train_elbo_name_and_a_typo_of_it_is_refused_in_one_line():
    assert pv.TrainConfig().elbo == "auto"
    with pytest.raises(pv.PyroVAEError, match=r"train.elbo: unknown name 'atuo': did you mean 'auto'\?.*valid: auto, "):
        pv.check_config(pv.config_from_dict({"train": {"elbo": "atuo"}}))


def test_evaluate_of_a_mixture_gives_its_exact_elbo_within_its_standard_error():
    x, model = mixture_data(n=30), Mixture()
    exact = mixture_elbo(model, x) / x.shape[0]
    m = pv.evaluate(model, x, iw_samples=None, elbo_samples=4000, prior_samples=0, seed=0)
    assert m["kl_method"] == "analytic"  # KL(q(c|x) || p(c)) and KL(q(z|x,c) || p(z)) at the drawn c: exact
    assert abs(m["elbo"] - exact) < 4 * m["elbo_se"], (m["elbo"], exact, m["elbo_se"])
    assert m["reconstruction_mse"] is not None  # the guide's mode of c, its mean of z
