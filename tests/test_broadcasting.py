"""Programs that do not broadcast over a leading draw dim (pyroVED's iVAE style) evaluate and diagnose, drawn one at a time."""

import math

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyro_vae as pv
from pyro_vae.infer.layout import build_layout
from pyro_vae.infer.sites import point_densities, trace_pair
from pyro_vae.infer.data_name import named_data

SIDE = 4
PIXELS = SIDE * SIDE


class Net(torch.nn.Module):
    """Encoder and decoder of a rotation-invariant VAE: z = (angle, content), pixels decoded from rotated coordinates."""

    def __init__(self, content: int, hidden: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.content = content
        d = 1 + content
        self.enc = torch.nn.Sequential(torch.nn.Linear(PIXELS, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2 * d))
        self.dec = torch.nn.Sequential(torch.nn.Linear(2 + content, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        t = torch.linspace(-1, 1, SIDE)
        self.register_buffer("grid", torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(PIXELS, 2))


def _rotation(phi):
    c, s = torch.cos(phi), torch.sin(phi)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


class IVAELike:
    """Written as pyroVED's iVAE is: the angle is z[:, 0], coordinates rotate with bmm, pixels come out of view(-1, P)."""

    latent_sites = ("z",)
    obs_site = "x"
    name = "ivae"

    def __init__(self, net, sigma=0.3):
        self.net, self.sigma = net, sigma

    def model(self, x):
        pyro.module(self.name, self.net)
        b, d = x.shape[0], 1 + self.net.content
        with pyro.plate("data", b):
            z = pyro.sample("z", dist.Normal(x.new_zeros(b, d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decode(z), self.sigma).to_event(1), obs=x)

    def decode(self, z):
        b = z.shape[0]
        phi, content = z[:, 0], z[:, 1:]
        grid = torch.bmm(self.net.grid.expand(b, PIXELS, 2), _rotation(phi))
        h = torch.cat([grid, content.unsqueeze(1).expand(b, PIXELS, self.net.content)], -1)
        return self.net.dec(h).view(-1, PIXELS)

    def guide(self, x):
        pyro.module(self.name, self.net)
        d = 1 + self.net.content
        with pyro.plate("data", x.shape[0]):
            out = self.net.enc(x)
            scale = torch.nn.functional.softplus(out[:, d:]) + 1e-3
            pyro.sample("z", dist.Normal(out[:, :d], scale).to_event(1))


class Broadcasting(IVAELike):
    """The same program written to broadcast: z[..., 0], matmul, reshape over x.shape[:-1]."""

    name = "broadcasting"

    def decode(self, z):
        phi, content = z[..., 0], z[..., 1:]
        grid = self.net.grid @ _rotation(phi)
        h = torch.cat([grid, content.unsqueeze(-2).expand(*content.shape[:-1], PIXELS, self.net.content)], -1)
        return self.net.dec(h).squeeze(-1)

    def guide(self, x):
        pyro.module(self.name, self.net)
        d = 1 + self.net.content
        with pyro.plate("data", x.shape[0]):
            out = self.net.enc(x)
            scale = torch.nn.functional.softplus(out[..., d:]) + 1e-3
            pyro.sample("z", dist.Normal(out[..., :d], scale).to_event(1))


class FirstRows(Broadcasting):
    """Runs with a draw dim but is wrong there: view(-1, d)[:b] keeps the first draw's codes for every draw."""

    name = "first_rows"

    def decode(self, z):
        b = z.shape[-2]
        return super().decode(z.reshape(-1, z.shape[-1])[:b])


class DrawDimOnly(Broadcasting):
    """Cannot run at all with one draw per point: bmm needs the draw dim it only has under a particle plate."""

    name = "draw_dim_only"

    def decode(self, z):
        w = self.net.grid[:, :1].T.expand(z.shape[-1], PIXELS)
        return torch.bmm(z, w.expand(z.shape[0], *w.shape))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: thousands of tiny traces, where thread hand-offs cost more than the work."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _trained(content: int, steps: int = 150, n: int = 120):
    """A net trained (Pyro's SVI on the broadcasting form) on data simulated by it: a q good enough for honest s.e.s."""
    net = Net(content)
    twin = Broadcasting(net)
    pyro.set_rng_seed(0)
    x = poutine.trace(poutine.uncondition(twin.model)).get_trace(torch.zeros(n, PIXELS)).nodes["x"]["value"].detach()
    pyro.clear_param_store()
    svi = SVI(twin.model, twin.guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x)
    pyro.clear_param_store()
    return net, x


@pytest.fixture(scope="module")
def net3(one_thread):
    return _trained(2)


@pytest.fixture(scope="module")
def net2(one_thread):
    """A 2-D latent: the diagnosis has the exact grid, and NUTS checked against it."""
    return _trained(1, steps=80, n=40)


def _close(a, b, name):
    """Two independent Monte Carlo estimates of one number agree within 4 combined standard errors."""
    se = math.hypot(a[name + "_se"], b[name + "_se"])
    assert abs(a[name] - b[name]) < 4 * se, (name, a[name], b[name], se)


def test_the_probe_tells_broadcasting_programs_from_the_others(net3):
    net, x = net3
    named = {"x": x}  # the programs' data parameter
    assert build_layout(Broadcasting(net), named).broadcasts
    assert not build_layout(IVAELike(net), named).broadcasts
    # runs with a draw dim, silently wrong there: the probe compares each draw with a plain trace
    assert not build_layout(FirstRows(net), named).broadcasts
    assert build_layout(pv.build_model(pv.ModelConfig(latent_dim=3), PIXELS), {"x": (x > 0).float()}).broadcasts


@pytest.mark.parametrize("program", [IVAELike, FirstRows])
def test_evaluate_of_a_program_that_does_not_broadcast_matches_its_broadcasting_twin(net3, program):
    net, x = net3
    x = x[:40]
    kw = dict(iw_samples=300, seed=0)
    got, twin = pv.evaluate(program(net), x, **kw), pv.evaluate(Broadcasting(net), x, **kw)
    for name in ("elbo", "log_likelihood", "log_likelihood_prior"):
        _close(got, twin, name)
    assert got["iw_samples"] == twin["iw_samples"] == 300 and got["kl_method"] == "analytic"
    # deterministic given the encoder's and decoder's means: equal up to float32 rounding
    assert got["kl"] == pytest.approx(twin["kl"], rel=1e-5)
    assert got["reconstruction_mse"] == pytest.approx(twin["reconstruction_mse"], rel=1e-5)
    assert got["posterior_mean_variance"] == pytest.approx(twin["posterior_mean_variance"], rel=1e-4)
    # the per-epoch test ELBO (one draw per point): one plain draw uses the noise a one-draw plate would
    one = dict(iw_samples=None, elbo_samples=1, prior_samples=0, reconstruction_error=False, seed=3)
    assert pv.evaluate(program(net), x, **one)["elbo"] == pytest.approx(pv.evaluate(Broadcasting(net), x, **one)["elbo"],
                                                                        rel=1e-5)


def test_broadcasting_programs_keep_the_vectorized_draws(net3):
    """The probe draws on its own stream: evaluate's log-weights are those of one vectorized trace after the layout's."""
    net, x = net3
    m, x, k = Broadcasting(net), x[:5], 7
    r = pv.evaluate_points(m, x, iw_samples=k, seed=11, keep_log_weights=True, prior_samples=0)
    with torch.no_grad():
        torch.manual_seed(11)
        trace_pair(m, named_data(m, x[:2]))  # the layout's plain trace
        gtr, mtr = trace_pair(m, named_data(m, x), k, 1)
        layout = build_layout(m, named_data(m, x[:2]))
        d = point_densities(gtr, mtr, layout, k, 5)
    w = d.log_lik.double() + d.log_prior.double() - d.log_q.double()
    assert torch.equal(r.log_weights, w.T)


def _settings(reference, local_steps=30):
    return pv.DiagnoseSettings(points=4, reference=reference, draws=200, nuts_warmup=30, nuts_samples=30,
                               nuts_chains=2, max_tree_depth=4, grid_size=24, local_steps=local_steps,
                               local_particles=1, sbc_sims=20, sbc_draws=9)


@pytest.mark.slow
def test_diagnose_runs_on_a_program_that_does_not_broadcast(net2):
    net, x = net2
    settings = _settings("nuts")
    got, twin = [pv.diagnose([pv.Subject("s", m, x[:4], list(range(4)))], settings).runs[0]
                 for m in (IVAELike(net), Broadcasting(net))]
    assert got.sbc is not None and got.sbc.skipped is None and got.sbc.ranks.shape == (20, 2)
    # q's ELBO per point: independent draws of one q, within 4 combined standard errors
    assert (abs(got.q.elbo - twin.q.elbo) < 4 * (got.q.elbo_se**2 + twin.q.elbo_se**2) ** 0.5).all()
    assert got.reference.method == "grid" and got.reference.nuts is not None and got.reference.nuts.draws == 30
    # both grids are the exact posterior of one model: equal to within a fine cell
    cell = (got.grid.hi - got.grid.lo) / settings.grid_size
    assert (abs(got.reference.mean - twin.reference.mean) < cell).all()


@pytest.mark.slow
def test_diagnose_without_a_reference_runs_on_a_program_that_does_not_broadcast(net2):
    net, x = net2
    # the local fit of this program, draw by draw, is the test above's; here the stages without a reference
    r = pv.diagnose([pv.Subject("s", IVAELike(net), x[:4], list(range(4)))], _settings("none", local_steps=0)).runs[0]
    assert r.reference.method == "none" and r.q.mean.shape == (4, 2) and r.generated is not None


@pytest.mark.parametrize("call, data", [
    (lambda m, x: pv.evaluate(m, x, iw_samples=10), "the evaluation data"),
    (lambda m, x: pv.diagnose([pv.Subject("s", m, x, [0, 1, 2])], pv.DiagnoseSettings(reference="none")),
     "the diagnosed points"),
])
def test_a_program_that_fails_with_one_plain_draw_is_one_line_before_any_work(net3, call, data):
    net, x = net3
    with pytest.raises(pv.PyroVAEError, match=f"fails on {data} with one draw per point") as e:
        call(DrawDimOnly(net), x[:3])
    msg = str(e.value)
    assert "\n" not in msg and "broadcast over leading batch dims" in msg and "x.shape[:-1]" in msg
