"""Programs written outside this library, as their authors wrote them (adapted only as a user would), measured right.

Each is checked against an estimator written here from the program's own
distributions, not against the library's arithmetic.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro
import pyro.distributions as dist
from pyro import poutine
from sklearn.datasets import load_digits

import pyro_vae as pv

LATENT, HIDDEN = 4, 64


def _digits(binary=True):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    if binary:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor(y)


# -- Pyro's VAE tutorial (https://pyro.ai/examples/vae.html), sizes scaled to the 8x8 digits -----------------


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, 64)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 64)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class VAE(nn.Module):
    # what pyro_vae asks of a program besides model and guide
    latent_sites = ("latent",)
    obs_site = "obs"

    def __init__(self, z_dim=LATENT, hidden_dim=HIDDEN):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder.forward(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, 64))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder.forward(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def _independent_log_px(vae, x, k, seed):
    """log p(x) by importance sampling written here from the tutorial's networks: (estimate, s.e.) per point."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        z = loc + scale * torch.randn((k,) + loc.shape, generator=g)
        probs = vae.decoder(z)
        log_lik = (x * torch.log(probs) + (1 - x) * torch.log1p(-probs)).sum(-1)
        log_w = (log_lik + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)).double()
    est = torch.logsumexp(log_w, 0) - math.log(k)
    w = torch.exp(log_w - log_w.max(0).values)
    # delta method: var(log mean w) ~ var(w) / (k mean(w)^2)
    se = (w.var(0) / (k * w.mean(0) ** 2)).sqrt()
    return est, se


def test_pyro_tutorial_vae_trains_and_its_log_px_agrees_with_an_independent_estimator():
    x, _ = _digits()
    pyro.set_rng_seed(0)
    vae = VAE()
    pv.fit(vae, x[:1500], x[1500:], pv.TrainConfig(elbo="trace", epochs=15, batch_size=100, lr=3e-3, device="cpu"),
           progress=False)
    test = x[1500:1560]
    r = pv.evaluate_points(vae, test, iw_samples=2000, prior_samples=0)
    ours, ours_se = r.log_likelihood, r.log_likelihood_var.sqrt()
    theirs, theirs_se = _independent_log_px(vae, test, 2000, seed=1)
    z = (ours - theirs) / (ours_se ** 2 + theirs_se ** 2).sqrt()
    assert float(z.abs().max()) < 4.5  # 60 points: |z| > 4.5 has probability ~ 4e-4 under agreement
    assert abs(float(z.mean())) < 4 / math.sqrt(60)


# -- a conditional VAE, p(x | y, z) p(z) with the label as an input (Kingma et al. 2014's M1+label form) -------


class CVAE(nn.Module):
    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, classes=10, z_dim=LATENT, hidden=HIDDEN):
        super().__init__()
        self.classes, self.z_dim = classes, z_dim
        self.dec = nn.Sequential(nn.Linear(z_dim + classes, hidden), nn.ReLU(), nn.Linear(hidden, 64))
        self.enc = nn.Sequential(nn.Linear(64 + classes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))

    def model(self, x, y):
        pyro.module("cvae", self)
        y1 = F.one_hot(y, self.classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            h = torch.cat([z, y1.expand(z.shape[:-1] + y1.shape[-1:])], -1)
            pyro.sample("x", dist.Bernoulli(logits=self.dec(h)).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("cvae", self)
        y1 = F.one_hot(y, self.classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc(torch.cat([x, y1], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))


@pytest.fixture(scope="module")
def cvae():
    x, y = _digits()
    pyro.set_rng_seed(0)
    m = CVAE()
    pv.fit(m, {"x": x[:1500], "y": y[:1500]}, None,
           pv.TrainConfig(elbo="trace", epochs=20, batch_size=100, lr=3e-3, device="cpu"), progress=False)
    return m, {"x": x[1500:1600], "y": y[1500:1600]}


def test_conditional_vae_scores_the_true_label_above_a_wrong_one(cvae):
    m, test = cvae
    right = pv.evaluate_points(m, test, iw_samples=200, prior_samples=0)
    wrong = pv.evaluate_points(m, {"x": test["x"], "y": (test["y"] + 5) % 10}, iw_samples=200, prior_samples=0)
    diff = right.log_likelihood - wrong.log_likelihood
    se = (right.log_likelihood_var + wrong.log_likelihood_var).sqrt()
    # on average over points, and for most points beyond their own noise
    assert float(diff.mean()) > 4 * float(diff.std() / math.sqrt(len(diff)))
    assert float((diff > 2 * se).double().mean()) > 0.6


def test_conditional_vae_is_diagnosed_with_each_points_own_label(cvae):
    m, test = cvae
    pts = {k: v[:4] for k, v in test.items()}
    settings = pv.DiagnoseSettings(points=4, draws=200, nuts_samples=60, nuts_warmup=60, nuts_chains=2, local_steps=50,
                                  sbc_sims=40)
    d = pv.diagnose([pv.Subject("cvae", m, pts, list(range(4)))], settings, progress=False)
    run = d.runs[0]
    # diagnose's ELBO per point is evaluate's, on the same named data, within their Monte Carlo errors
    ev = pv.evaluate_points(m, pts, iw_samples=None, elbo_samples=2000, prior_samples=0)
    q = run.q
    z = (torch.as_tensor(q.elbo) - ev.elbo) / torch.sqrt(torch.as_tensor(q.elbo_se) ** 2 + ev.elbo_var)
    assert float(z.abs().max()) < 4


# -- Pyro's semi-supervised M2 (examples/vae/ss_vae_M2.py), its model and guide as written there ---------------


def _cat(parts):
    """Concatenate along the last dim, broadcasting the batch dims (what the example's MLP(allow_broadcast) does)."""
    shape = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(shape + p.shape[-1:]) for p in parts], -1)


class MLP(nn.Module):
    def __init__(self, sizes, out=None):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.Softplus()]
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(sizes[-2], s) for s in (out or [sizes[-1]]))

    def forward(self, x):
        h = self.body(_cat(x) if isinstance(x, list) else x)
        outs = [head(h) for head in self.heads]
        return outs if len(outs) > 1 else outs[0]


class SSVAE(nn.Module):
    latent_sites = ("z",)
    obs_site = "x"

    def __init__(self, output_size=10, input_size=64, z_dim=8, hidden=128, aux_loss_multiplier=20.0):
        super().__init__()
        self.output_size, self.input_size, self.z_dim = output_size, input_size, z_dim
        self.aux_loss_multiplier = aux_loss_multiplier
        self.encoder_y = MLP([input_size, hidden, output_size])
        self.encoder_z = MLP([input_size + output_size, hidden, None], out=[z_dim, z_dim])
        self.decoder = MLP([z_dim + output_size, hidden, input_size])

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        labelled = ys is not None
        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, self.output_size, **options) / (1.0 * self.output_size)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            logits = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)
        if labelled and self.aux_loss_multiplier:
            # the example's model_classify (its auxiliary loss), folded into the one model
            with pyro.plate("data"), poutine.scale(scale=self.aux_loss_multiplier):
                pyro.sample("y_aux", dist.OneHotCategorical(logits=self.encoder_y(xs)), obs=ys)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = torch.softmax(self.encoder_y(xs), -1)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, raw = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, torch.exp(raw)).to_event(1))

    def classifier(self, xs):
        return self.encoder_y(xs).argmax(-1)


@pytest.fixture(scope="module")
def m2():
    """M2 trained with elbo = "enum" on the digits with 10% of the training labels (the rest NaN: unlabelled)."""
    x, y = _digits()
    n_tr = 1500
    lab = torch.randperm(n_tr, generator=torch.Generator().manual_seed(0))[: n_tr // 10]
    ys = torch.full((n_tr, 10), float("nan"))
    ys[lab] = F.one_hot(y[:n_tr][lab], 10).float()
    pyro.set_rng_seed(0)
    m = SSVAE()
    pv.fit(m, {"xs": x[:n_tr], "ys": ys}, None,
           pv.TrainConfig(elbo="enum", epochs=60, batch_size=100, lr=3e-3, device="cpu"), progress=False)
    return m, x, y, lab, n_tr


def test_m2_with_ten_percent_of_the_labels_beats_a_classifier_trained_on_those_labels_alone(m2):
    m, x, y, lab, n_tr = m2
    torch.manual_seed(0)
    alone = MLP([64, 128, 10])  # the same network as M2's q(y|x)
    opt = torch.optim.Adam(alone.parameters(), 3e-3)
    for _ in range(1000):
        opt.zero_grad()
        F.cross_entropy(alone(x[:n_tr][lab]), y[:n_tr][lab]).backward()
        opt.step()
    with torch.no_grad():
        ours = m.classifier(x[n_tr:]) == y[n_tr:]
        theirs = alone(x[n_tr:]).argmax(-1) == y[n_tr:]
    # McNemar's test on the points the two classify differently: M2 wins more of them beyond chance
    wins, losses = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
    assert (wins - losses) / math.sqrt(wins + losses) > 2.0, (wins, losses)


def test_m2_log_px_sums_the_label_exactly(m2):
    """evaluate's log p(x) on unlabelled points = log sum_y p(y) p(x|y), each p(x|y) by importance sampling here."""
    m, x, _, _, n_tr = m2
    pts = x[n_tr:n_tr + 12]
    r = pv.evaluate_points(m, {"xs": pts}, iw_samples=500, prior_samples=0)
    assert r.summed_sites == ["y"] and r.latent_names == [f"z[{j}]" for j in range(m.z_dim)]
    k, g = 4000, torch.Generator().manual_seed(3)
    per_y, var_y = [], []
    with torch.no_grad():
        for c in range(10):
            y1 = F.one_hot(torch.full((len(pts),), c), 10).float()
            loc, raw = m.encoder_z([pts, y1])
            z = loc + torch.exp(raw) * torch.randn((k,) + loc.shape, generator=g)
            logits = m.decoder([z, y1])
            log_w = (dist.Bernoulli(logits=logits).log_prob(pts).sum(-1) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                     - dist.Normal(loc, torch.exp(raw)).log_prob(z).sum(-1)).double()
            w = torch.exp(log_w - log_w.max(0).values)
            per_y.append(torch.logsumexp(log_w, 0) - math.log(k) + math.log(0.1))
            var_y.append(w.var(0) / (k * w.mean(0) ** 2))
    per_y, var_y = torch.stack(per_y), torch.stack(var_y)
    exact_sum = torch.logsumexp(per_y, 0)
    share = torch.softmax(per_y, 0)  # delta method through the logsumexp
    se = ((share ** 2 * var_y).sum(0) + r.log_likelihood_var).sqrt()
    z = (r.log_likelihood - exact_sum) / se
    assert float(z.abs().max()) < 4.0, z
