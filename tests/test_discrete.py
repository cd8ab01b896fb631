"""Discrete latents and mixture priors, summed exactly, checked against closed forms.

The oracle is a linear-Gaussian model with a discrete label: y ~ Cat(pi),
z ~ N(mu_y, s_y^2 I), x | y, z ~ N(W z + B_y, sigma^2 I).  Given y, x is
Gaussian, N(W mu_y + B_y, s_y^2 W W^T + sigma^2 I), so p(x) is a finite
mixture of Gaussians, and the exact posterior of z is a mixture over y of
Gaussians (weights p(y|x)), whose mean the test computes.  Three programs
share it: an M2-style model whose guide samples y, q(y|x) q(z|x, y) (Pyro's
ss_vae); a mixture prior whose component c is only in the model; and the
same prior as one MixtureSameFamily site.  Parameters are set by hand (no
training), so every number has a closed form.

Tolerances: Monte Carlo estimates get 4 of their reported standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import pyro
import pyro.distributions as dist

import pyro_vae as pv

D, C, SIGMA = 4, 3, 0.5


class Oracle:
    """The parameters, p(x) and the posterior mean of z in closed form (float64 numpy)."""

    def __init__(self, latent=2, seed=0, shared_prior=False):
        g = np.random.default_rng(seed)
        self.L = latent
        self.pi = np.array([0.5, 0.3, 0.2])
        self.W = g.normal(size=(D, latent))
        self.B = 2.0 * g.normal(size=(C, D))
        self.mu = np.zeros((C, latent)) if shared_prior else 1.5 * g.normal(size=(C, latent))
        self.s = np.ones(C) if shared_prior else np.array([1.0, 0.6, 1.4])
        ys = g.choice(C, size=8, p=self.pi)
        z = self.mu[ys] + self.s[ys, None] * g.normal(size=(8, latent))
        self.x = z @ self.W.T + self.B[ys] + SIGMA * g.normal(size=(8, D))

    def _given_y(self, x):
        """Per y: log p(x|y), posterior mean and covariance of z given x and y."""
        out = []
        for c in range(C):
            m = self.W @ self.mu[c] + self.B[c]
            cov = self.s[c] ** 2 * self.W @ self.W.T + SIGMA**2 * np.eye(D)
            d = x - m
            sol = np.linalg.solve(cov, d.T).T
            logp = -0.5 * (d * sol).sum(1) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
            prec = np.eye(self.L) / self.s[c] ** 2 + self.W.T @ self.W / SIGMA**2
            S = np.linalg.inv(prec)
            mean = (S @ (self.W.T @ (x - self.B[c]).T / SIGMA**2 + (self.mu[c] / self.s[c] ** 2)[:, None])).T
            out.append((logp, mean, S))
        return out

    def log_px(self, x):
        parts = self._given_y(x)
        a = np.stack([np.log(self.pi[c]) + parts[c][0] for c in range(C)], 0)
        mx = a.max(0)
        return mx + np.log(np.exp(a - mx).sum(0))

    def posterior(self, x):
        """p(y|x) (points, C), and the mean of p(z|x) = sum_y p(y|x) N(z; m_y, S_y)."""
        parts = self._given_y(x)
        a = np.stack([np.log(self.pi[c]) + parts[c][0] for c in range(C)], 1)
        w = np.exp(a - a.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return w, sum(w[:, c, None] * parts[c][1] for c in range(C))

    def guide_params(self, x_scale=1.2, temper=0.7):
        """A good, not exact, guide: q(z|x, y) the exact Gaussian posterior widened, q(y|x) a tempered p(y|x)."""
        G, g0, sd = [], [], []
        for c in range(C):
            prec = np.eye(self.L) / self.s[c] ** 2 + self.W.T @ self.W / SIGMA**2
            S = np.linalg.inv(prec)
            Gc = S @ self.W.T / SIGMA**2
            G.append(Gc)
            g0.append(S @ (self.mu[c] / self.s[c] ** 2) - Gc @ self.B[c])
            sd.append(x_scale * np.sqrt(np.diag(S)))
        # p(y|x) is linear-softmax in x only when the covariances agree; tempering the logits of one
        # pooled covariance is a fair, imperfect q(y|x)
        cov = self.W @ self.W.T + SIGMA**2 * np.eye(D)
        means = self.mu @ self.W.T + self.B
        P = np.linalg.solve(cov, means.T).T  # (C, D)
        A = temper * P
        a = temper * (np.log(self.pi) - 0.5 * (P * means).sum(1))
        return [torch.tensor(v, dtype=torch.float32) for v in (np.stack(G), np.stack(g0), np.stack(sd), A, a)]


def _t(v):
    return torch.tensor(v, dtype=torch.float32)


class M2:
    """y ~ Cat(pi) in model and guide (Pyro's ss_vae M2 shape): q(y|x) q(z|x, y)."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, o: Oracle):
        self.pi, self.W, self.B, self.mu, self.s = map(_t, (o.pi, o.W, o.B, o.mu, o.s))
        self.G, self.g, self.sd, self.A, self.a = o.guide_params()

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(self.mu[y], self.s[y].unsqueeze(-1)).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.B[y], SIGMA).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x @ self.A.T + self.a))
            # the per-y linear map, applied to every y at once, then the drawn (or enumerated) y's row
            loc = torch.einsum("cld,...d->...cl", self.G, x) + self.g
            loc = (torch.nn.functional.one_hot(y, C).unsqueeze(-1) * loc).sum(-2)
            pyro.sample("z", dist.Normal(loc, self.sd[y]).to_event(1))


class MixturePrior:
    """A mixture prior with its component c in the model alone: the guide is q(z|x) only."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, o: Oracle, explicit=True):
        self.explicit = explicit
        self.pi, self.W, self.B, self.mu, self.s = map(_t, (o.pi, o.W, o.B, o.mu, o.s))
        # a pooled q(z|x): the posterior under the prior's moment-matched Gaussian, widened
        m = (o.pi[:, None] * o.mu).sum(0)
        cov = sum(o.pi[c] * (o.s[c] ** 2 * np.eye(o.L) + np.outer(o.mu[c] - m, o.mu[c] - m)) for c in range(C))
        assert np.allclose(o.B, o.B[0]), "the mixture oracle needs one offset B for every component"
        prec = np.linalg.inv(cov) + o.W.T @ o.W / SIGMA**2
        S = np.linalg.inv(prec)
        self.G = _t(S @ o.W.T / SIGMA**2)
        self.g = _t(S @ np.linalg.solve(cov, m) - S @ o.W.T @ o.B[0] / SIGMA**2)
        self.sd = _t(1.5 * np.sqrt(np.diag(S)))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            if self.explicit:
                c = pyro.sample("c", dist.Categorical(self.pi))
                z = pyro.sample("z", dist.Normal(self.mu[c], self.s[c].unsqueeze(-1)).to_event(1))
            else:
                comp = dist.Normal(self.mu, self.s.unsqueeze(-1).expand(self.mu.shape)).to_event(1)
                z = pyro.sample("z", dist.MixtureSameFamily(dist.Categorical(self.pi), comp))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.B[0], SIGMA).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.G.T + self.g, self.sd).to_event(1))


def _mixture_oracle(latent=2, seed=1):
    o = Oracle(latent=latent, seed=seed)
    o.B = np.repeat(o.B[:1], C, 0)  # one offset: the components differ in their prior alone
    g = np.random.default_rng(seed + 10)
    ys = g.choice(C, size=8, p=o.pi)
    z = o.mu[ys] + o.s[ys, None] * g.normal(size=(8, latent))
    o.x = z @ o.W.T + o.B[0] + SIGMA * g.normal(size=(8, D))
    return o


# ---------------------------------------------------------------------------
# evaluation: log p(x) with the discrete sites summed


def _check_log_px(model, o, k=400):
    x = torch.tensor(o.x, dtype=torch.float32)
    r = pv.evaluate_points(model, x, iw_samples=k, seed=0, prior_samples=0)
    exact = o.log_px(o.x)
    se = r.log_likelihood_var.sqrt().numpy()
    err = r.log_likelihood.numpy() - exact
    assert np.all(np.abs(err) < 4 * se + 1e-4), (err, se)
    assert np.all(se < 0.1), se  # the summed weights are good: a s.e. of a few hundredths
    assert r.latent_names == ["z[0]", "z[1]"]
    return r


def test_log_px_sums_a_guide_label_exactly():
    o = Oracle()
    r = _check_log_px(M2(o), o)
    assert r.summed_sites == ["y"]
    s = r.summary()
    assert s["summed_sites"] == ["y"] and s["latent_names"] == ["z[0]", "z[1]"]
    assert s["iw_khat_max"] < 0.7


def test_elbo_of_a_guide_label_counts_its_kl():
    """The ELBO of q(y|x) q(z|x, y): log p(x) - KL(q(y|x) || p(y|x)) - E_q(y)[KL(q(z|x, y) || p(z|x, y))]."""
    o = Oracle()
    m = M2(o)
    x = torch.tensor(o.x, dtype=torch.float32)
    r = pv.evaluate_points(m, x, iw_samples=400, seed=0, prior_samples=0)
    post_y, _ = o.posterior(o.x)
    logits = o.x @ m.A.double().numpy().T + m.a.double().numpy()
    q_y = np.exp(logits - logits.max(1, keepdims=True))
    q_y /= q_y.sum(1, keepdims=True)
    gap = (q_y * np.log(q_y / post_y)).sum(1)
    G, g0, sd = (t.double().numpy() for t in (m.G, m.g, m.sd))
    for c, (_, mean, S) in enumerate(o._given_y(o.x)):
        mq, var_q = o.x @ G[c].T + g0[c], sd[c] ** 2
        Si = np.linalg.inv(S)
        d = mean - mq
        kl = 0.5 * (np.trace(Si * var_q) + ((d @ Si) * d).sum(1) - o.L + np.linalg.slogdet(S)[1] - np.log(var_q).sum())
        gap += q_y[:, c] * kl
    err = r.elbo.numpy() - (o.log_px(o.x) - gap)
    assert np.all(np.abs(err) < 4 * r.elbo_var.sqrt().numpy() + 1e-4), err


def test_log_px_sums_a_mixture_component_only_in_the_model():
    o = _mixture_oracle()
    r = _check_log_px(MixturePrior(o), o)
    assert r.summed_sites == ["c"]
    # the ELBO is of the model with c summed out: below log p(x), and a Monte Carlo KL (p(z) is a mixture)
    assert not r.kl_analytic
    assert np.all(r.elbo.numpy() < o.log_px(o.x) + 4 * r.elbo_var.sqrt().numpy())


def test_log_px_of_a_mixture_same_family_prior():
    o = _mixture_oracle()
    r = _check_log_px(MixturePrior(o, explicit=False), o)
    assert r.summed_sites == []


def test_log_px_sums_a_bernoulli_component():
    """c ~ Bernoulli(0.3) in the model alone, z | c ~ N(mu_c, 1), x | z ~ N(w z, sigma^2 I): p(x|c) is Gaussian."""
    w, mu, p1 = np.array([1.0, -0.5]), np.array([-1.5, 2.0]), 0.3

    class Switch:
        latent_sites = ("z",)
        obs_site = "x"

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                c = pyro.sample("c", dist.Bernoulli(p1))
                z = pyro.sample("z", dist.Normal(_t(mu)[c.long()], 1.0))
                pyro.sample("x", dist.Normal(z.unsqueeze(-1) * _t(w), SIGMA).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x @ _t(w) / (w @ w + SIGMA**2), 1.2))

    x = np.array([[-1.2, 0.9], [2.1, -1.0], [0.3, 0.2]])
    parts = []
    for c, pc in ((0, 1 - p1), (1, p1)):
        cov = np.outer(w, w) + SIGMA**2 * np.eye(2)
        d = x - w * mu[c]
        parts.append(math.log(pc) - 0.5 * (d * np.linalg.solve(cov, d.T).T).sum(1)
                     - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1])
    exact = np.logaddexp(*parts)
    r = pv.evaluate_points(Switch(), torch.tensor(x, dtype=torch.float32), iw_samples=400, prior_samples=0)
    assert r.summed_sites == ["c"] and r.latent_names == ["z"]
    se = r.log_likelihood_var.sqrt().numpy()
    assert np.all(np.abs(r.log_likelihood.numpy() - exact) < 4 * se + 1e-4) and np.all(se < 0.1)


def test_an_unbounded_discrete_latent_is_refused_by_diagnose():
    class Counts:
        latent_sites = ("n",)
        obs_site = "x"

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                n = pyro.sample("n", dist.Poisson(3.0))
                pyro.sample("x", dist.Normal(n.unsqueeze(-1), 1.0).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("n", dist.Poisson(x.abs().mean(-1) + 1))

    with pytest.raises(pv.PyroVAEError, match="'n' is discrete with an unbounded support"):
        pv.diagnose([pv.Subject("counts", Counts(), torch.ones(3, 2), [0, 1, 2])],
                    pv.DiagnoseSettings(**{**SMALL, "reference": "none"}), progress=False)


def test_a_discrete_site_in_a_nested_plate_is_refused():
    class PerPixel:
        latent_sites = ("z",)
        obs_site = "x"

        def model(self, x):
            with pyro.plate("data", x.shape[0], dim=-2):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                with pyro.plate("pixels", x.shape[1], dim=-1):
                    c = pyro.sample("c", dist.Bernoulli(0.5))
                    pyro.sample("x", dist.Normal(z + c, 1.0), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0], dim=-2):
                pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(pv.PyroVAEError, match="'c' is inside plate"):
        pv.evaluate(PerPixel(), torch.zeros(3, 2), iw_samples=10)


# ---------------------------------------------------------------------------
# diagnostics: the continuous sites, the discrete ones summed


SMALL = dict(points=3, draws=200, nuts_warmup=100, nuts_samples=150, nuts_chains=2, local_steps=30,
             local_particles=4, sbc_sims=20, sbc_draws=19, grid_size=64, seed=0)


def _diagnose(model, o, **settings):
    x = torch.tensor(o.x[:3], dtype=torch.float32)
    d = pv.diagnose([pv.Subject("m", model, x, [0, 1, 2])], pv.DiagnoseSettings(**{**SMALL, **settings}),
                    progress=False)
    return d, d.runs[0]


def _log_normal(v, mean, sd):
    return (-0.5 * ((v - mean) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)).sum(-1)


def _lse(a, axis):
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


def _saved_draws(r):
    from pyro_vae.diagnostics.arviz_io import group

    ss = group(r.q_data, "sample_stats")
    return group(r.q_data, "posterior")["z"].values[0], ss["log_p"].values[0], ss["log_q"].values[0]


@pytest.mark.slow
def test_diagnose_a_mixture_prior_sums_its_component(tmp_path):
    o = _mixture_oracle()
    d, r = _diagnose(MixturePrior(o), o, reference="nuts")
    assert (r.latent_sites, r.summed_sites, r.latent_labels) == (["z"], ["c"], ["z[0]", "z[1]"])
    # the draws' log p is log sum_c p(c) p(z|c) p(x|z), in closed form
    z, log_p, _ = _saved_draws(r)
    x = o.x[None, :3]
    prior = _lse(np.stack([math.log(o.pi[c]) + _log_normal(z, o.mu[c], o.s[c]) for c in range(C)]), 0)
    assert np.allclose(log_p, prior + _log_normal(x, z @ o.W.T + o.B[0], SIGMA), atol=2e-3)
    # a 2-D z: the exact grid is the reference, and NUTS (c summed by Pyro's enumeration) is checked against it
    _, exact = o.posterior(o.x[:3])
    assert r.reference.method == "grid"
    assert np.all(np.abs(r.reference.mean - exact) < 1e-3 * r.reference.sd)
    n = r.reference.nuts
    assert n.max_std_mean_error_vs_grid < 4 / math.sqrt(n.ess_bulk_min)
    # the amortized q is 1.5x too wide: the per-point fit gains, and the comparison says so
    assert r.summary.gap > 4 * r.summary.gap_se
    assert 1.2 < r.summary.sd_ratio < 1.8
    d.save(tmp_path)
    paths = pv.write_report(pv.load_diagnosis(tmp_path), tmp_path)
    line = "Latent sites of m: covers z; sums out exactly (not diagnosed as coordinates) c."
    assert line in paths["md"].read_text() and line in paths["html"].read_text()


def test_diagnose_a_mixture_same_family_prior():
    o = _mixture_oracle()
    _, r = _diagnose(MixturePrior(o, explicit=False), o, reference="grid", sbc_sims=0)
    assert (r.latent_sites, r.summed_sites) == (["z"], [])
    _, exact = o.posterior(o.x[:3])
    assert np.all(np.abs(r.reference.mean - exact) < 1e-3 * r.reference.sd)
    assert r.summary.gap > 4 * r.summary.gap_se


@pytest.mark.slow
def test_diagnose_a_guide_label_nuts_matches_the_exact_posterior():
    o = Oracle(latent=1)
    m = M2(o)
    _, r = _diagnose(m, o, reference="nuts")
    assert (r.latent_sites, r.summed_sites, r.latent_labels) == (["z"], ["y"], ["z[0]"])
    # the draws' log q is the guide's marginal, log sum_y q(y|x) q(z|x, y)
    z, _, log_q = _saved_draws(r)
    x = o.x[None, :3]
    logits = x @ m.A.double().numpy().T + m.a.double().numpy()
    log_qy = logits - _lse(logits, -1)[..., None]
    G, g0, sd = (t.double().numpy() for t in (m.G, m.g, m.sd))
    parts = [log_qy[..., c] + _log_normal(z, x @ G[c].T + g0[c], sd[c]) for c in range(C)]
    assert np.allclose(log_q, _lse(np.stack(parts), 0), atol=2e-3)
    # NUTS over z with y summed out: its mean is the exact mixture-of-Gaussians posterior's
    _, exact = o.posterior(o.x[:3])
    assert r.reference.method == "nuts"
    se = r.reference.sd / np.sqrt(r.reference.nuts.ess_bulk)
    assert np.all(np.abs(r.reference.mean - exact) < 4 * se), (r.reference.mean, exact, se)
    assert r.sbc.ranks.shape == (SMALL["sbc_sims"], 1)
    assert np.all(r.khat.values < 0.7)
