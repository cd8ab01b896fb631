"""The ELBO node by node: each sample site's term per point, checked against closed forms and quadrature.

Three hand-written programs with fixed parameters (no training), float64:

- a two-layer linear-Gaussian hierarchy z2 -> z1 -> x with a linear guide
  q(z1 | x) q(z2 | x, z1): every term is a Gaussian expectation in closed form;
- an M2-like model y -> x <- z whose guide q(y | x) q(z | x, y) has a discrete
  y: y's term is KL(q(y|x) || p(y)) and z's is sum_y q(y|x) KL(q(z|x,y) || p(z)),
  both exactly;
- a mixture prior c -> z -> x (and c -> x) whose component c only the model
  has: z's term is E_q[log q(z) - log sum_c p(c) N(z; m_c, s_c^2)], found by
  1-D quadrature.

Monte Carlo terms get 4 of their reported standard errors; exact ones 1e-9.
"""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch
import pyro
import pyro.distributions as dist

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.evaluation.results import concat_points
from pyro_vae.infer.layout import build_layout
from pyro_vae.infer.data_name import named_data

D64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


def _t(v):
    return torch.tensor(v, dtype=D64)


def _x(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=D64) * 1.5


def _nodes(r):
    return {t.name: t for t in r.site_terms}


def _within_4_se(t, exact):
    se = t.var.sqrt().numpy()
    err = t.term.numpy() - exact
    assert np.all(np.isfinite(se)) and np.all(se > 0), se
    assert np.all(np.abs(err) < 4 * se), (t.name, err, se)


def _adds_up(r):
    """Observed terms minus latent terms is each point's ELBO, and their sums are the reconstruction and the KL."""
    obs = sum(t.term for t in r.site_terms if t.kind == "observed")
    lat = sum(t.term for t in r.site_terms if t.kind != "observed")
    torch.testing.assert_close(obs, r.reconstruction, rtol=0, atol=1e-9)
    torch.testing.assert_close(lat, r.kl, rtol=0, atol=1e-9)
    torch.testing.assert_close(obs - lat, r.elbo, rtol=0, atol=1e-9)


# -- (a) a two-layer hierarchy z2 -> z1 -> x ----------------------------------------------------------

A, S1, S0 = 0.8, 0.5, 0.6
B = [1.0, -0.5, 0.7]


class TwoLayer:
    """z2 ~ N(0, 1), z1 | z2 ~ N(A z2, S1^2), x | z1 ~ N(B z1, S0^2 I); q(z1|x) q(z2|x, z1), both linear."""

    latent_sites = ("z1", "z2")
    obs_site = "x"

    def __init__(self, g: float):
        self.B, self.u, self.h = _t(B), _t([0.5, -0.2, 0.3]), _t([0.3, 0.1, -0.2])
        self.c1, self.t1, self.c2, self.t2, self.g = 0.1, 0.7, -0.2, 0.8, g

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(_t(0.0), 1.0))
            z1 = pyro.sample("z1", dist.Normal(A * z2, S1))
            pyro.sample("x", dist.Normal(z1.unsqueeze(-1) * self.B, S0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x @ self.u + self.c1, self.t1))
            loc = x @ self.h + self.c2
            if self.g:  # else q(z2 | x) reads no latent: a mean-field guide
                loc = loc + self.g * z1
            pyro.sample("z2", dist.Normal(loc, self.t2))


def two_layer_terms(m: TwoLayer, x: np.ndarray):
    """Per point: E_q[log p(x|z1)], E_q[log q(z1) - log p(z1|z2)], E_q[log q(z2) - log p(z2)], with
    z1 = m1 + t1 e1 and z2 = g z1 + h.x + c2 + t2 e2."""
    b, u, h = (v.numpy() for v in (m.B, m.u, m.h))
    g, t1, t2 = m.g, m.t1, m.t2
    m1 = x @ u + m.c1
    m2 = g * m1 + x @ h + m.c2
    d = x.shape[1]
    rec = -d / 2 * math.log(2 * math.pi * S0**2) - (((x - m1[:, None] * b) ** 2).sum(1) + (b**2).sum() * t1**2) / (2 * S0**2)
    # z1 - A z2 = (1 - A g) z1 - A (h.x + c2) - A t2 e2
    diff_mean, diff_var = m1 - A * m2, (1 - A * g) ** 2 * t1**2 + A**2 * t2**2
    kl1 = -0.5 * (LOG_2PI + 1 + 2 * math.log(t1)) + 0.5 * math.log(2 * math.pi * S1**2) + (diff_mean**2 + diff_var) / (2 * S1**2)
    kl2 = 0.5 * (t2**2 + m2**2 + g**2 * t1**2 - 1) - math.log(t2)
    return rec, kl1, kl2, m1


@pytest.mark.parametrize("g", [0.6, 0.0], ids=["structured", "mean-field"])
def test_each_term_of_a_two_layer_hierarchy_matches_its_closed_form(g):
    m, x = TwoLayer(g), _x(8, 3, seed=0)
    r = pv.evaluate_points(m, x, iw_samples=None, elbo_samples=4000, prior_samples=0, seed=0)
    rec, kl1, kl2, m1 = two_layer_terms(m, x.numpy())
    nodes = _nodes(r)
    assert [t.name for t in r.site_terms] == ["z1", "z2", "x"]
    assert [t.kind for t in r.site_terms] == ["latent", "latent", "observed"]
    assert [t.dims for t in r.site_terms] == [1, 1, 3]
    _within_4_se(nodes["x"], rec)
    if g:
        # z1's prior reads z2, which this guide draws given z1: its analytic KL would be biased
        assert nodes["z1"].method == "monte_carlo" and nodes["z2"].method == "analytic"
        _within_4_se(nodes["z1"], kl1)
        _within_4_se(nodes["z2"], kl2)  # analytic at the drawn z1: random through z1 alone
    else:
        assert nodes["z1"].method == nodes["z2"].method == "analytic"
        _within_4_se(nodes["z1"], kl1)  # KL(q(z1) || N(A z2, S1^2)) at the drawn z2
        # q(z2 | x) reads no latent: its KL is exact, with no Monte Carlo error
        np.testing.assert_allclose(nodes["z2"].term.numpy(), kl2, rtol=0, atol=1e-12)
        assert torch.all(nodes["z2"].var == 0)
    _adds_up(r)
    assert r.kl_analytic == (not g)
    # the summary's nodes: plain numbers, the active units of each latent from its own columns
    s = r.summary()
    assert [n["name"] for n in s["nodes"]] == ["z1", "z2", "x"]
    z1 = s["nodes"][0]
    assert z1["term"] == pytest.approx(float(kl1.mean()), abs=4 * z1["se"])
    assert z1["latent_names"] == ["z1"] and z1["summed_over"] == []
    assert z1["posterior_mean_variance"] == pytest.approx([float(np.var(m1, ddof=1))], rel=1e-12)
    assert z1["active_units"] == 1 and s["nodes"][2]["active_units"] is None
    assert s["nodes"][1]["kl_per_dim"] == pytest.approx([s["kl_per_dim"][1]])
    json.dumps(s, allow_nan=False)


def test_blocks_of_points_join_into_the_nodes_of_all_points():
    m, x = TwoLayer(0.6), _x(9, 3, seed=1)
    parts = [pv.evaluate_points(m, x[:4], iw_samples=50, prior_samples=0, seed=1),
             pv.evaluate_points(m, x[4:], iw_samples=50, prior_samples=0, seed=2)]
    joined = concat_points(parts)
    for i, t in enumerate(joined.site_terms):
        assert t.name == parts[0].site_terms[i].name and t.method == parts[0].site_terms[i].method
        torch.testing.assert_close(t.term, torch.cat([p.site_terms[i].term for p in parts]), rtol=0, atol=0)
        torch.testing.assert_close(t.var, torch.cat([p.site_terms[i].var for p in parts]), rtol=0, atol=0)
    _adds_up(joined)
    # the variance of E_q[z1 | x] is over all nine points, not one block's
    m1 = x.numpy() @ m.u.numpy() + m.c1
    assert joined.summary()["nodes"][0]["posterior_mean_variance"] == pytest.approx([float(np.var(m1, ddof=1))],
                                                                                   rel=1e-12)


# -- (b) a discrete guide site: y -> x <- z, q(y | x) q(z | x, y) ---------------------------------------

PI = [0.5, 0.3, 0.2]
MU = [[-2.0, 1.0], [1.5, 0.5], [0.0, -2.0]]
S = 0.7


class M2Like:
    """y ~ Cat(PI), z ~ N(0, I_2), x | y, z ~ N(MU_y + z, S^2 I); q(y|x) softmax-linear, q(z|x, y) Gaussian.

    q's mean of z[1] is one constant for every y: that dimension is an inactive unit.
    """

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self):
        self.pi, self.mu = _t(PI), _t(MU)
        self.A, self.a = _t([[1.0, -0.5, 0.2], [0.3, 0.4, -1.0]]), _t([0.2, 0.0, -0.1])
        self.R = _t([[0.8, 0.0], [0.6, 0.0], [0.7, 0.0]])
        self.c = _t([[0.1, 0.2], [-0.3, 0.2], [0.0, 0.2]])
        self.sd = _t([[0.5, 0.9], [0.6, 0.8], [0.4, 1.1]])

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(_t(0.0), 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(self.mu[y] + z, S).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x @ self.A + self.a))
            pyro.sample("z", dist.Normal((x - self.mu[y]) * self.R[y] + self.c[y], self.sd[y]).to_event(1))


def test_a_discrete_guide_site_is_summed_exactly_over_its_values():
    m, x = M2Like(), _x(10, 2, seed=3)
    # the program broadcasts over draws, q(y|x) included: its 300 draws a point are one trace
    assert build_layout(m, named_data(m, x)).broadcasts
    r = pv.evaluate_points(m, x, iw_samples=300, prior_samples=0, seed=0)
    xn = x.numpy()
    logits = xn @ m.A.numpy() + m.a.numpy()
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    kl_y = (q * np.log(q / np.array(PI))).sum(1)
    kl_z = np.zeros(len(xn))
    rec = np.zeros(len(xn))
    for c in range(3):
        loc = (xn - m.mu[c].numpy()) * m.R[c].numpy() + m.c[c].numpy()
        sd = m.sd[c].numpy()
        kl_z += q[:, c] * 0.5 * (sd**2 + loc**2 - 1 - 2 * np.log(sd)).sum(1)
        rec += q[:, c] * (-LOG_2PI - 2 * math.log(S) - (((xn - MU[c] - loc) ** 2).sum(1) + (sd**2).sum()) / (2 * S**2))
    nodes = _nodes(r)
    assert [t.name for t in r.site_terms] == ["y", "z", "x"]
    assert [t.kind for t in r.site_terms] == ["discrete", "latent", "observed"]
    assert nodes["y"].method == "exact_sum" and nodes["z"].method == "analytic"
    # not a draw of y: the exact sums, with no Monte Carlo error
    np.testing.assert_allclose(nodes["y"].term.numpy(), kl_y, rtol=0, atol=1e-9)
    np.testing.assert_allclose(nodes["z"].term.numpy(), kl_z, rtol=0, atol=1e-9)
    assert torch.all(nodes["y"].var == 0) and torch.all(nodes["z"].var == 0)
    _within_4_se(nodes["x"], rec)
    _adds_up(r)
    np.testing.assert_allclose(r.kl.numpy(), kl_y + kl_z, rtol=0, atol=1e-9)
    assert r.kl_analytic and r.summary()["kl_method"] == "analytic"
    s = {n["name"]: n for n in r.summary()["nodes"]}
    assert s["y"]["active_units"] is None and s["y"]["latent_names"] == []
    # z's columns: E_q[z[1] | x] is the same constant at every y, so only z[0] is active
    assert s["z"]["latent_names"] == ["z[0]", "z[1]"] and s["z"]["dims"] == 2 and s["z"]["active_units"] == 1
    assert s["z"]["posterior_mean_variance"][1] == pytest.approx(0.0, abs=1e-20)
    assert len(s["z"]["kl_per_dim"]) == 2


class LabelAfterCode:
    """The same model with one-dim z, x; the guide draws z ~ q(z|x) first, then y ~ q(y | x, z)."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self):
        self.pi, self.mu = _t(PI), _t([-2.0, 0.5, 2.0])

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(_t(0.0), 1.0))
            pyro.sample("x", dist.Normal((self.mu[y] + z).unsqueeze(-1), S).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.5 * x[..., 0], 0.8))
            pyro.sample("y", dist.Categorical(logits=-(x - z.unsqueeze(-1) - self.mu) ** 2))


def test_a_discrete_site_drawn_after_a_continuous_one_is_summed_given_its_draw():
    """y's term is E_q(z|x)[KL(q(y | x, z) || p(y))] and x's E_q[log p(x | y, z)], both by quadrature over z;
    z's KL is exact (its draw is shared by every value of y, whose weights then sum to one)."""
    m, x = LabelAfterCode(), _x(5, 1, seed=5)
    r = pv.evaluate_points(m, x, iw_samples=None, elbo_samples=4000, prior_samples=0, seed=0)
    xn, mu = x.numpy()[:, 0], m.mu.numpy()
    grid = 0.5 * xn[:, None] + 0.8 * np.linspace(-12, 12, 24001)[None, :]
    logits = -(xn[:, None, None] - grid[..., None] - mu) ** 2
    log_q = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    kl_y = (np.exp(log_q) * (log_q - np.log(PI))).sum(-1)
    log_x = (np.exp(log_q) * _log_normal(xn[:, None, None], mu + grid[..., None], S)).sum(-1)
    dens = np.exp(_log_normal(grid, 0.5 * xn[:, None], 0.8))
    nodes = _nodes(r)
    assert [t.name for t in r.site_terms] == ["y", "z", "x"] and nodes["y"].method == "exact_sum"
    _within_4_se(nodes["y"], np.trapezoid(dens * kl_y, grid, axis=1))
    _within_4_se(nodes["x"], np.trapezoid(dens * log_x, grid, axis=1))
    kl_z = 0.5 * (0.8**2 + (0.5 * xn) ** 2 - 1) - math.log(0.8)
    np.testing.assert_allclose(nodes["z"].term.numpy(), kl_z, rtol=0, atol=1e-12)
    assert nodes["z"].method == "analytic" and torch.all(nodes["z"].var < 1e-20)  # rounding alone
    _adds_up(r)


# -- (c) a mixture prior whose component c only the model has -----------------------------------------

PI_C, M_C, S_C = [0.6, 0.4], [-1.5, 1.0], [0.5, 0.9]
W, S_X = [1.0, -0.5], 0.6
B_C = [[0.0, 0.0], [1.0, -1.0]]  # x's offset per component, when c is also a parent of x


class MixturePrior:
    """c ~ Cat(PI_C) in the model alone, z | c ~ N(M_C[c], S_C[c]^2), x | z (, c) ~ N(W z (+ B_C[c]), S_X^2 I)."""

    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, direct: bool):
        self.direct = direct
        self.pi, self.m, self.s, self.w, self.b = _t(PI_C), _t(M_C), _t(S_C), _t(W), _t(B_C)
        self.u, self.c0, self.t = _t([0.6, -0.3]), 0.1, 0.55

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(self.m[c], self.s[c]))
            loc = z.unsqueeze(-1) * self.w + (self.b[c] if self.direct else 0.0)
            pyro.sample("x", dist.Normal(loc, S_X).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.u + self.c0, self.t))


def _log_normal(v, mean, sd):
    return -0.5 * LOG_2PI - np.log(sd) - (v - mean) ** 2 / (2 * sd**2)


def mixture_terms(m: MixturePrior, x: np.ndarray):
    """Per point, by the trapezoid rule over q(z|x) on +-12 sd: E_q[log q(z) - log sum_c p(c) N(z; m_c, s_c^2)]
    and E_q[log p(x | z)] of the model with c summed out, p(x | z) = sum_c p(c | z) p(x | z, c)."""
    mq, t = x @ m.u.numpy() + m.c0, m.t
    grid = mq[:, None] + t * np.linspace(-12, 12, 24001)[None, :]  # (points, nodes)
    log_q = _log_normal(grid, mq[:, None], t)
    log_pc = np.stack([math.log(PI_C[c]) + _log_normal(grid, M_C[c], S_C[c]) for c in range(2)])
    log_prior = np.logaddexp(log_pc[0], log_pc[1])
    offsets = np.array(B_C) if m.direct else np.zeros((2, 2))
    log_x = np.stack([_log_normal(x[:, None, :], grid[..., None] * np.array(W) + offsets[c], S_X).sum(-1)
                      for c in range(2)])
    log_lik = np.logaddexp(log_pc[0] + log_x[0], log_pc[1] + log_x[1]) - log_prior
    dens = np.exp(log_q)

    def expect(f):
        return np.trapezoid(dens * f, grid, axis=1)

    return expect(log_q - log_prior), expect(log_lik)


@pytest.mark.parametrize("direct", [False, True], ids=["c-z-x", "c-parents-z-and-x"])
def test_a_model_only_component_is_summed_out_of_the_densities_it_enters(direct):
    m, x = MixturePrior(direct), _x(8, 2, seed=4)
    r = pv.evaluate_points(m, x, iw_samples=None, elbo_samples=4000, prior_samples=0, seed=0)
    kl_z, rec = mixture_terms(m, x.numpy())
    nodes = _nodes(r)
    assert [t.name for t in r.site_terms] == ["z", "x"] and r.summed_sites == ["c"]
    assert nodes["z"].kind == "latent" and nodes["z"].method == "monte_carlo"  # a mixture prior has no closed-form KL
    assert nodes["z"].summed_over == ["c"]
    assert nodes["x"].summed_over == (["c"] if direct else [])
    _within_4_se(nodes["z"], kl_z)
    _within_4_se(nodes["x"], rec)
    _adds_up(r)
    s = {n["name"]: n for n in r.summary()["nodes"]}
    assert s["z"]["summed_over"] == ["c"] and "c" not in s  # c has no term of its own


# -- the command line: a per-node table for a model with several latents -------------------------------

PROGRAM = textwrap.dedent('''
    import torch
    import pyro
    import pyro.distributions as dist
    from pyro.distributions import constraints


    class Hierarchy:
        """z2 -> z1 -> x with a linear guide q(z1 | x) q(z2 | z1, x)."""

        latent_sites = ("z1", "z2")
        obs_site = "x"

        def __init__(self, data_dim):
            self.data_dim = data_dim

        def model(self, x):
            w = pyro.param("w", 0.5 * torch.ones(self.data_dim))
            with pyro.plate("data", x.shape[0]):
                z2 = pyro.sample("z2", dist.Normal(torch.zeros(()), 1.0))
                z1 = pyro.sample("z1", dist.Normal(0.8 * z2, 0.5))
                pyro.sample("x", dist.Normal(z1.unsqueeze(-1) * w, 1.0).to_event(1), obs=x)

        def guide(self, x):
            u = pyro.param("u", torch.zeros(self.data_dim))
            g = pyro.param("g", torch.tensor(0.1))
            t1 = pyro.param("t1", torch.tensor(0.7), constraint=constraints.positive)
            t2 = pyro.param("t2", torch.tensor(0.7), constraint=constraints.positive)
            with pyro.plate("data", x.shape[0]):
                z1 = pyro.sample("z1", dist.Normal(x @ u, t1))
                pyro.sample("z2", dist.Normal(g * z1, t2))


    class OneLatent(Hierarchy):
        """z -> x: one latent, one observation."""

        latent_sites = ("z",)

        def model(self, x):
            w = pyro.param("w", 0.5 * torch.ones(self.data_dim))
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(()), 1.0))
                pyro.sample("x", dist.Normal(z.unsqueeze(-1) * w, 1.0).to_event(1), obs=x)

        def guide(self, x):
            u = pyro.param("u", torch.zeros(self.data_dim))
            t = pyro.param("t", torch.tensor(0.7), constraint=constraints.positive)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x @ u, t))
''')

CONFIG = textwrap.dedent('''
    [data]
    source = "synthetic"
    num_points = 120
    synthetic_dim = 4

    [model]
    program = "node_split_models:{program}"

    [train]
    elbo = "trace"
    epochs = 1
    batch_size = 40
    device = "cpu"
''')


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    (folder / "node_split_models.py").write_text(PROGRAM)
    return folder


def _trained(project, program, monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    (project / f"{program}.toml").write_text(CONFIG.format(program=program))
    run = project / program
    assert main(["train", str(project / f"{program}.toml"), "--out", str(run), "--quiet", "--iw-samples", "10"]) == 0
    return run


def test_evaluate_prints_a_table_of_the_nodes_of_a_hierarchy(project, capsys, monkeypatch):
    run = _trained(project, "Hierarchy", monkeypatch)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "50", "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert [(n["name"], n["kind"], n["method"]) for n in nodes] == [
        ("z1", "latent", "monte_carlo"), ("z2", "latent", "analytic"), ("x", "observed", "monte_carlo")]
    assert main(["evaluate", str(run), "--iw-samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "per node (ELBO = observed terms - latent terms" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("    z", "    x "))}
    for n in nodes:  # the same seed: the table shows the JSON's numbers
        row = rows[n["name"]]
        assert row[1] == n["kind"] and float(row[2]) == pytest.approx(n["term"], abs=5e-4)
        assert float(row[3]) == pytest.approx(n["se"], abs=5e-4) and int(row[4]) == n["dims"]
    assert "analytic KL" in " ".join(rows["z2"]) and "Monte Carlo" in " ".join(rows["z1"])


def test_evaluate_of_one_latent_and_one_observation_prints_no_node_table(project, capsys, monkeypatch):
    run = _trained(project, "OneLatent", monkeypatch)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "20", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in metrics["nodes"]] == ["z", "x"]
    assert main(["evaluate", str(run), "--iw-samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "test ELBO" in out and "per node" not in out
