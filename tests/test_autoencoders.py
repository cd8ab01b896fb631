"""The autoencoder family (models/graph/penalties.py, corruption.py): closed forms, configs, CLI.

Closed-form checks fit the library's own model and guide (the loss is Pyro's
ELBO of ``model.model``/``model.guide``, penalties and corruption included) in
float64 with full-batch L-BFGS on small synthetic data whose covariance is
*exactly* U diag(lambda) U^T, so the oracles below hold for the empirical
distribution with no sampling error.  Where the objective is itself random
(corruption, reparameterized draws) the same draws are reused in every
evaluation (a fixed seed inside the closure: a sample-average approximation
with n * R draws), and the tolerance is set from that approximation's error,
which falls like 1 / sqrt(n * R).

Notation: sigma = the Gaussian likelihood's fixed scale; -log p(x|z) =
||x - g(z)||^2 / (2 sigma^2) + const, so 2 sigma^2 * (per-point loss) is the
issue's E||x - g(f(x))||^2 plus 2 sigma^2 times each penalty.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pytest
import torch
import pyro
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled

import pyro_vae as pv
from pyro_vae.cli import main as cli_main
from pyro_vae.config import ModelConfig, NetConfig, config_from_dict, load_config
from pyro_vae.models.corruption import CORRUPTIONS
from pyro_vae.errors import PyroVAEError
from pyro_vae.errors import DegenerateObjectiveWarning
from pyro_vae.models.graph.penalties import TiedDecoder, jacobian_sq_norm_autograd, mlp_jacobian_sq_norm
from pyro_vae.models.nets import ACTIVATIONS, mlp
from pyro_vae.infer.objectives import scale_sites

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LINEAR = NetConfig(hidden=())
# eigenvalues of the synthetic data's covariance: well separated, so subspaces are well defined
LAMS = (5.0, 3.0, 1.2, 0.6, 0.3, 0.1)


@pytest.fixture
def float64_one_thread():
    """Closed-form fits: float64, and one thread (tiny tensors; threads only add sync cost)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def exact_cov_data(lams=LAMS, n=400, seed=0):
    """Centered x (n, d) with (1/n) x^T x = U diag(lams) U^T exactly; returns (x, U), U's columns by lams."""
    g = torch.Generator().manual_seed(seed)
    d = len(lams)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    q, _ = torch.linalg.qr(z)  # orthonormal, still centered (combinations of centered columns)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = math.sqrt(n) * q @ torch.diag(torch.tensor(lams, dtype=torch.float64).sqrt()) @ u.T
    return x, u


def build(data_dim=len(LAMS), seed=1, **model):
    model.setdefault("likelihood", "normal")
    model.setdefault("encoder", LINEAR)
    model.setdefault("decoder", LINEAR)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateObjectiveWarning)
        return pv.build_model(ModelConfig(**model), data_dim).double()


def lbfgs(model, loss_fn, max_iter=200, seed=None):
    """Minimize loss_fn(model) with strong-Wolfe L-BFGS; ``seed`` fixes the draws in every evaluation."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-11, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        if seed is not None:
            torch.manual_seed(seed)
        loss = loss_fn(model)
        loss.backward()
        return loss

    opt.step(closure)
    return float(closure().detach())


def neg_elbo(x, elbo=None, beta=1.0):
    """Per-point loss of the library's model/guide pair (beta scales the latent site, as the trainer does)."""
    elbo = elbo or Trace_ELBO()

    def loss(model):
        with scale_sites(model.latent_sites, beta):
            return elbo.differentiable_loss(model.model, model.guide, x) / x.shape[0]

    return loss


def principal_angles(a, b):
    qa, _ = torch.linalg.qr(a)
    qb, _ = torch.linalg.qr(b)
    return torch.arccos(torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0))


def encoder_weight(model, rows=None):
    w = model.encoders["z"].mlp[0].weight.detach()
    return w if rows is None else w[:rows]


# ---------------------------------------------------------------------------
# closed forms


def test_linear_autoencoder_spans_the_pca_subspace(float64_one_thread):
    # Undercomplete AE = delta guide.  prior_scale = 1e4 all but removes -log p(z) (its weight is
    # sigma^2 / prior_scale^2 = 1e-10 of the reconstruction's), so the loss is E||x - D(Ex)||^2 / (2 sigma^2).
    x, u = exact_cov_data()
    k = 2
    model = build(latent_dim=k, guide="delta", scale=0.1, prior_scale=1e4)
    lbfgs(model, neg_elbo(x))
    decoder = model.nets["x"].mlp[0].weight.detach()  # (d, k)
    angles = principal_angles(decoder, u[:, :k])
    # float64 L-BFGS reaches the optimum to ~1e-8 rad; a wrong subspace (the nearest competitor
    # swaps in u_3) would be off by pi/2 in one angle
    assert angles.max() < 1e-5, angles
    # and the end-to-end map is the orthogonal projector onto span(U_k)
    end_to_end = decoder @ encoder_weight(model)
    assert torch.allclose(end_to_end, u[:, :k] @ u[:, :k].T, atol=1e-6)


def test_linear_denoising_autoencoder_end_to_end_map(float64_one_thread):
    # E||x - M(x + n)||^2 with n ~ N(0, nu I) and rank(M) <= k is minimized by
    # M = U_k diag(lambda_i / (lambda_i + nu)) U_k^T.  The model draws n itself (corruption =
    # "gaussian", level sqrt(nu)) in the guide; the likelihood scores the clean x.
    nu, k, reps = 0.5, 2, 100
    x, u = exact_cov_data(n=400)
    model = build(latent_dim=k, guide="delta", scale=0.1, prior_scale=1e4,
                  corruption="gaussian", corruption_level=math.sqrt(nu))
    lbfgs(model, neg_elbo(x.repeat(reps, 1)), seed=7)  # 40,000 fixed noise draws
    end_to_end = model.nets["x"].mlp[0].weight.detach() @ encoder_weight(model)
    lam = torch.tensor(LAMS[:k], dtype=torch.float64)
    expected = u[:, :k] @ torch.diag(lam / (lam + nu)) @ u[:, :k].T
    # The sample-average error of the noise moments is ~ sqrt(nu / 40,000) ~ 0.004 per entry
    # (measured: 0.0025 at 80,000 draws, 0.0075 at 20,000); 0.02 is 5 of those, while a plain
    # (non-denoising) AE gives the projector U_k U_k^T, 0.11 away.
    assert (end_to_end - expected).abs().max() < 0.02
    assert (end_to_end - u[:, :k] @ u[:, :k].T).abs().max() > 0.08
    # training steps corrupt; evaluation (no gradients, or eval mode) sees the clean x
    assert not torch.equal(model.encoder_inputs({"x": x})["x"], x)
    with torch.no_grad():
        assert torch.equal(model.encoder_inputs({"x": x})["x"], x)
    model.eval()
    assert torch.equal(model.encoder_inputs({"x": x})["x"], x)


def test_tied_linear_contractive_autoencoder(float64_one_thread):
    # Tied linear AE f(x) = V x, g(z) = V^T z: ||df/dx||_F^2 = ||V||_F^2.  Per point, times 2 sigma^2:
    #   E||x - V^T V x||^2 + gamma ||V||_F^2 + (sigma / prior_scale)^2 E||V x||^2,  gamma = 2 sigma^2 c,
    # minimized by V^T V = U_k diag(1 - gamma / (2 lambda_i) - sigma^2 / (2 prior_scale^2)) U_k^T.
    # (The last term is the N(0, prior_scale^2) prior's, kept exact here: 5e-11.)
    sigma, gamma, k, prior_scale = 0.1, 0.6, 3, 1e4
    c = gamma / (2 * sigma**2)
    x, u = exact_cov_data()
    model = build(latent_dim=k, guide="delta", scale=sigma, prior_scale=prior_scale, contractive=c, tied=True)
    assert isinstance(model.nets["x"].net, TiedDecoder)
    lbfgs(model, neg_elbo(x))
    v = encoder_weight(model)
    lam = torch.tensor(LAMS[:k], dtype=torch.float64)
    shrink = 1 - gamma / (2 * lam) - sigma**2 / (2 * prior_scale**2)
    expected = u[:, :k] @ torch.diag(shrink) @ u[:, :k].T
    assert torch.allclose(v.T @ v, expected, atol=1e-6)
    # the penalty is what shrinks: without it the same model gives the projector
    assert (v.T @ v - u[:, :k] @ u[:, :k].T).abs().max() > 0.05


BETA_CASES = [
    # (n, replicas, relative tolerance): 5,000 draws in the fast case, 40,000 in the slow one
    pytest.param(200, 25, 0.05, id="fast"),
    pytest.param(400, 100, 0.015, id="precise", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("n, reps, rel_tol", BETA_CASES)
@pytest.mark.parametrize("beta_sigma2, active", [(0.9, 3), (1.5, 2)])
def test_linear_beta_vae_collapses_exactly_below_beta_sigma2(float64_one_thread, beta_sigma2, active, n, reps,
                                                             rel_tol):
    # A linear VAE with fixed sigma^2 and KL weight beta is the linear VAE with noise beta sigma^2, whose
    # optimum is probabilistic PCA's: W^T W has eigenvalues max(0, lambda_i - beta sigma^2), i <= k.
    # With lambda = (5, 3, 1.2, ...) and k = 3, the third latent is alive at beta sigma^2 = 0.9
    # (eigenvalue 0.3) and collapsed (eigenvalue 0, KL 0) at 1.5.
    sigma, k = 0.5, 3
    beta = beta_sigma2 / sigma**2
    x, _ = exact_cov_data(n=n)
    model = build(latent_dim=k, guide="normal", scale=sigma)
    lbfgs(model, neg_elbo(x.repeat(reps, 1), TraceMeanField_ELBO(), beta=beta), seed=3, max_iter=100)
    w = model.nets["x"].mlp[0].weight.detach()
    eig = torch.linalg.eigvalsh(w.T @ w).flip(0)
    lam = torch.tensor(LAMS[:k], dtype=torch.float64)
    expected = (lam - beta_sigma2).clamp(min=0)
    # The sample-average error of the reparameterized draws grows with lambda_i (measured over 4 seeds
    # at 5,000 draws: up to 2% of lambda_1, 0.9% of lambda_3), so the tolerance is relative to lambda_i;
    # for the third latent it is 0.06 (fast) against the 0.3 that separates alive from collapsed.
    assert ((eig - expected).abs() <= rel_tol * lam).all(), (eig, expected)
    # the collapsed direction: its KL(q(z_j|x) || p(z_j)) is ~0 (an alive one with eigenvalue 0.3 has 0.14)
    with torch.no_grad():
        q = model.families["z"].guide(model.encoders["z"]({"x": x})).base_dist
        loc, scale = q.loc, q.scale
    kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).mean(0)
    assert int((kl > 0.05).sum()) == active, kl


@pytest.mark.slow
def test_sparse_autoencoder_sparsity_grows_with_lambda(float64_one_thread):
    # Sparse AE: Laplace prior with rate lambda under the delta guide, -log p(z) = lambda |z|_1 + const.
    # Data: x = A s with A (6 x 3) orthonormal and sparse sources s (75% exact zeros).  A tied linear
    # AE reconstructs x for any rotation of its code, so without the L1 term its codes are a dense
    # rotation of s; the L1 term picks the rotation with the sparsest code (s itself), and larger
    # lambda then shrinks whole units to zero.  Tied weights pin the code's scale (untied, the code
    # could shrink for free), so one absolute threshold means the same at every lambda.
    g = torch.Generator().manual_seed(0)
    n, d, k = 200, 6, 3
    s = 2 * torch.randn(n, k, generator=g, dtype=torch.float64) * (torch.rand(n, k, generator=g) < 0.25)
    a, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    x = s @ a.T
    source_zeros = float((s == 0).double().mean())
    tol = 1e-3 * float(s.std())  # "nearly zero": a thousandth of the sources' spread

    def zero_fraction(**prior):
        model = build(latent_dim=k, guide="delta", scale=0.3, tied=True, **prior)
        lbfgs(model, neg_elbo(x), max_iter=200)
        with torch.no_grad():
            return float((model.encode(x).abs() < tol).double().mean())

    dense = zero_fraction(prior="normal", prior_scale=1e4)  # lambda -> 0: no L1 term at all
    fractions = [dense] + [zero_fraction(prior="laplace", sparsity=lam) for lam in (0.3, 3.0, 30.0)]
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
    assert dense < 0.1, fractions  # a generic rotation of s has almost no zeros
    assert fractions[1] >= source_zeros - 0.01, (fractions, source_zeros)  # the sparse code s is found
    assert fractions[-1] > fractions[1] + 0.1, fractions  # and strong L1 switches whole units off


# ---------------------------------------------------------------------------
# the contractive penalty: exact, closed form, and the degenerate untied case


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("hidden", [(), (7,), (7, 5), (6, 4, 3)], ids=lambda h: f"hidden{list(h)}")
def test_closed_form_jacobian_norm_equals_autograd(float64_one_thread, activation, hidden):
    torch.manual_seed(0)
    net = mlp(5, hidden, 6, activation)
    x = 2 * torch.randn(9, 5)  # spread over both sides of every kink and the softplus threshold
    rows = 4  # the code rows only (a normal guide's net also outputs its scales)
    closed = mlp_jacobian_sq_norm(net, x, rows)
    reference = jacobian_sq_norm_autograd(lambda v: net(v)[..., :rows], x)
    assert torch.allclose(closed, reference, rtol=1e-10, atol=1e-12)
    # the gradient w.r.t. the weights (what training uses) agrees too
    g_closed = torch.autograd.grad(closed.sum(), list(net.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(reference.sum(), list(net.parameters()), allow_unused=True)
    for a, b in zip(g_closed, g_ref):
        if a is None or b is None:  # e.g. the last bias: the Jacobian does not depend on it
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("guide", ["delta", "normal"])
def test_contractive_factor_is_the_penalty_on_the_code(float64_one_thread, guide):
    # The model's "contractive" site is a pyro.factor of -lambda ||df/dx||_F^2 per point, f = the code
    # (the mean for a normal guide), and it is all that changes the loss.
    x = torch.rand(8, 5)
    model = build(data_dim=5, latent_dim=3, guide=guide, contractive=0.7, encoder=NetConfig((6,), "tanh"),
                  decoder=NetConfig((6,), "tanh"))
    trace = pyro.poutine.trace(model.model).get_trace(x)
    site = trace.nodes["contractive"]
    assert site["is_observed"] and site["infer"].get("is_auxiliary")
    code = lambda v: model.families["z"].guide_mean(model.encoders["z"].mlp(v))  # noqa: E731
    expected = 0.7 * jacobian_sq_norm_autograd(code, x)
    assert torch.allclose(site["fn"].log_factor, -expected, rtol=1e-10)


def _rescaled_losses(model, x, c):
    """Loss and reconstruction before and after scaling the code by c (encoder * c, decoder / c)."""
    loss = neg_elbo(x)
    with torch.no_grad():
        before = (float(loss(model)), model.decode(model.encode(x)).clone())
        model.encoders["z"].mlp[-1].weight.mul_(c)
        model.encoders["z"].mlp[-1].bias.mul_(c)
        model.nets["x"].mlp[0].weight.div_(c)
        after = (float(loss(model)), model.decode(model.encode(x)).clone())
    return before, after


def test_untied_contractive_autoencoder_is_degenerate_and_warns(float64_one_thread):
    # The untied linear CAE has no minimizer: halving the code (encoder / 2, decoder * 2) leaves the
    # reconstruction unchanged and lowers the penalty 4x, forever.  pyro_vae's choice: tie the
    # weights (tied = true) and warn when they are not tied.
    spec = dict(data_dim=6, latent_dim=2, guide="delta", scale=0.1, contractive=5.0)
    with pytest.warns(DegenerateObjectiveWarning, match="model.tied = true"):
        pv.build_model(ModelConfig(likelihood="normal", encoder=LINEAR, decoder=LINEAR, latent_dim=2,
                                   guide="delta", contractive=5.0), 6)
    x, _ = exact_cov_data()
    model = build(**spec)
    lbfgs(model, neg_elbo(x), max_iter=30)
    (loss0, rec0), (loss1, rec1) = _rescaled_losses(model, x, 0.5)
    assert torch.allclose(rec0, rec1, atol=1e-10)
    assert loss1 < loss0 - 1.0  # penalty 5 * ||E||^2 per point, cut by 3/4
    # tied, the same rescaling is not free: it changes the reconstruction and raises the loss
    tied = build(**spec, tied=True)
    lbfgs(tied, neg_elbo(x))
    with torch.no_grad():
        loss = neg_elbo(x)
        base = float(loss(tied))
        for c in (0.5, 2.0):
            tied.encoders["z"].mlp[-1].weight.mul_(c)
            assert float(loss(tied)) > base
            tied.encoders["z"].mlp[-1].weight.div_(c)


def test_degeneracy_warning_only_where_it_applies():
    def warns(**model):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pv.build_model(ModelConfig(likelihood="normal", latent_dim=2, encoder=NetConfig((8,)),
                                       decoder=NetConfig((8,)), **model), 5)
        return any(issubclass(w.category, DegenerateObjectiveWarning) for w in caught)

    assert warns(guide="delta", contractive=1.0)
    assert warns(guide="delta", prior="laplace", sparsity=2.0)
    assert not warns(guide="delta", contractive=1.0, tied=True)
    assert not warns(guide="delta", prior="laplace", sparsity=2.0, tied=True)
    assert not warns(guide="normal", contractive=1.0)  # the KL's entropy term resists shrinking
    assert not warns(guide="delta")  # the plain undercomplete AE
    assert not warns(guide="delta", corruption="masking", corruption_level=0.2)


# ---------------------------------------------------------------------------
# corruption processes and tied weights


def test_corruption_processes():
    torch.manual_seed(0)
    x = torch.rand(20000, 4) * 0.8 + 0.1  # strictly inside (0, 1)
    gauss = CORRUPTIONS["gaussian"](0.3)(x)
    assert abs(float((gauss - x).std()) - 0.3) < 0.01
    masked = CORRUPTIONS["masking"](0.25)(x)
    dropped = masked == 0
    assert abs(float(dropped.float().mean()) - 0.25) < 0.01
    assert torch.equal(masked[~dropped], x[~dropped])
    sp = CORRUPTIONS["salt_and_pepper"](0.2)(x)
    hit = sp != x
    assert abs(float(hit.float().mean()) - 0.2) < 0.01
    assert set(sp[hit].unique().tolist()) == {0.0, 1.0}
    assert abs(float(sp[hit].mean()) - 0.5) < 0.02
    assert CORRUPTIONS["none"](0.0)(x) is x


@pytest.mark.parametrize("guide", ["delta", "normal"])
def test_denoising_corrupts_the_encoder_input_and_scores_the_clean_x(guide):
    x = torch.rand(16, 5)
    model = build(data_dim=5, latent_dim=2, guide=guide, corruption="salt_and_pepper", corruption_level=0.5)
    model.float()
    seen = []
    model.encoders["z"].mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    guide_trace = pyro.poutine.trace(model.guide).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    assert not torch.equal(seen[-1], x)  # the encoder saw x~
    assert torch.equal(model_trace.nodes["x"]["value"], x)  # the likelihood scored x


def test_tied_decoder_mirrors_the_encoder():
    model = build(data_dim=5, latent_dim=2, guide="normal", tied=True, encoder=NetConfig((7, 4), "tanh"),
                  decoder=NetConfig((4, 7), "tanh"))
    dec = model.nets["x"].net
    assert isinstance(dec, TiedDecoder)
    # the decoder owns only biases; its weights are the encoder's (the mean's rows of the last layer)
    assert {n for n, _ in dec.named_parameters()} == {"biases.0", "biases.1", "biases.2"}
    z = torch.randn(3, 2, dtype=torch.float64)
    enc = [m for m in model.encoders["z"].mlp if isinstance(m, torch.nn.Linear)]
    h = torch.tanh(z @ enc[2].weight[:2] + dec.biases[0])
    h = torch.tanh(h @ enc[1].weight + dec.biases[1])
    assert torch.allclose(dec(z), h @ enc[0].weight + dec.biases[2])
    # gradients of the reconstruction reach the shared weights
    dec(z).sum().backward()
    assert enc[0].weight.grad is not None and enc[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model, match", [
    (dict(tied=True, encoder=NetConfig((8,)), decoder=NetConfig((6,))), "mirrored"),
    (dict(tied=True, encoder=NetConfig((8, 4)), decoder=NetConfig((8, 4))), r"decoder.hidden = \[4, 8\]"),
    (dict(tied=True, scale="amortized"), "amortized"),
    (dict(tied=True, likelihood="categorical", levels=3), "categorical"),
])
def test_tied_weights_errors_name_the_fix(model, match):
    with pytest.raises(PyroVAEError, match=match):
        pv.build_model(ModelConfig(**{"likelihood": "normal", "latent_dim": 2, **model}), 5)


# ---------------------------------------------------------------------------
# the config: new keys, defaults, round trip, errors

NEW_KEYS = {
    "prior": "laplace", "sparsity": 4.0, "contractive": 0.5, "corruption": "masking",
    "corruption_level": 0.3, "tied": True, "guide": "delta",
}


def test_new_keys_default_to_the_plain_vae():
    m = ModelConfig()
    short = m.short
    assert (short.prior_scale, short.sparsity, short.contractive, short.corruption, short.corruption_level, short.tied) == (
        1.0, None, 0.0, "none", 0.0, False)
    model = pv.build_model(m, 4)
    assert model.contractive is None and not model.corruption.active
    assert torch.equal(model.families["z"].prior_scale, torch.ones(16))
    assert isinstance(model.nets["x"].mlp, torch.nn.Sequential)  # an untied MLP, as before


def test_new_keys_round_trip_through_toml(tmp_path):
    cfg = config_from_dict({"model": NEW_KEYS})
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = load_config(path)
    assert again == cfg
    for key, value in NEW_KEYS.items():
        assert getattr(again.model.short, key) == value
    # and the Python declaration is the same spec
    assert again.model == ModelConfig(**NEW_KEYS)
    model = pv.build_model(again.model, 4)
    assert torch.allclose(model.families["z"].prior_scale, torch.full((16,), 0.25))  # Laplace scale = 1 / sparsity
    assert model.contractive.weight == 0.5 and model.corruption.level == 0.3
    assert isinstance(model.nets["x"].net, TiedDecoder)


BAD = [
    ({"sparsity": 2.0}, "model.sparsity is the rate of the Laplace prior.*set model.prior = 'laplace'"),
    ({"prior": "laplace", "sparsity": 0.0}, r"model.sparsity: must be > 0"),
    ({"prior": "laplace", "sparsity": 2.0, "prior_scale": 3.0}, "keep one of them"),
    ({"prior_scale": -1.0}, r"model.prior_scale: must be > 0"),
    ({"contractive": -0.1}, r"model.contractive: must be >= 0"),
    ({"contractive": "lots"}, r"model.contractive: expected a number"),
    ({"corruption_level": -0.2}, r"model.corruption_level: must be >= 0"),
    ({"tied": "yes"}, "model.tied: expected true or false"),
]
# names and levels a registry knows: checked where the registry lives, when the model is built (before any data is
# read: tests/test_cli.py), in one line all the same
BAD_AT_BUILD = [
    ({"corruption": "gausian", "corruption_level": 0.1}, "did you mean 'gaussian'"),
    ({"corruption": "gaussian"}, "'gaussian' needs model.corruption_level > 0"),
    ({"corruption": "masking", "corruption_level": 1.5}, r"'masking' needs model.corruption_level in \(0, 1\)"),
    ({"corruption": "salt_and_pepper", "corruption_level": 1.0}, r"in \(0, 1\)"),
    ({"corruption_level": 0.2}, "set model.corruption = 'gaussian', 'masking' or 'salt_and_pepper'"),
]


@pytest.mark.parametrize("values, match", BAD, ids=[str(v) for v, _ in BAD])
def test_bad_values_fail_with_one_line_naming_the_fix(values, match):
    with pytest.raises(PyroVAEError, match=match) as err:
        config_from_dict({"model": values})
    assert "\n" not in str(err.value)
    # the same spec declared in Python fails the same way (type checks aside, which TOML does)
    if values.get("contractive") != "lots" and values.get("tied") != "yes" and values.get("corruption") != "gausian":
        with pytest.raises(PyroVAEError, match=match):
            ModelConfig(**values)


@pytest.mark.parametrize("values, match", BAD_AT_BUILD, ids=[str(v) for v, _ in BAD_AT_BUILD])
def test_bad_names_and_levels_fail_at_build_with_one_line_naming_the_fix(values, match):
    spec = config_from_dict({"model": values}).model
    with pytest.raises(PyroVAEError, match=match) as err:
        pv.build_model(spec, 4)
    assert "\n" not in str(err.value)
    with pytest.raises(PyroVAEError, match=match):
        pv.build_model(ModelConfig(**values), 4)


def test_unknown_corruption_in_python_fails_at_build():
    with pytest.raises(PyroVAEError, match="did you mean 'masking'"):
        pv.build_model(ModelConfig(corruption="maskin", corruption_level=0.1), 4)


# ---------------------------------------------------------------------------
# every example config trains from the CLI

FAMILY_EXAMPLES = [
    "ae_undercomplete", "ae_sparse", "ae_contractive", "ae_denoising",
    "vae_gaussian", "vae_beta", "vae_iwae", "vae_denoising",
    "decoder_gaussian_learned", "decoder_gaussian_amortized", "decoder_continuous_bernoulli", "decoder_categorical",
]


@pytest.mark.parametrize("name", FAMILY_EXAMPLES)
def test_example_config_trains_from_the_cli(name, tmp_path, capsys):
    out = tmp_path / name
    plots = name == "ae_contractive"  # one run with plots (samples from the prior of a tied MAP model)
    code = cli_main(["train", str(EXAMPLES / f"{name}.toml"), "--set", "train.epochs=1", "--out", str(out),
                     "--quiet", "--iw-samples", "5"] + ([] if plots else ["--no-plots"]))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run = pv.load_run(out)  # rebuilt from config.toml through build_model
    spec = load_config(EXAMPLES / f"{name}.toml").model
    # a point-mass guide's objective is not a bound on log p(x), and the table says so
    short = spec.short
    label = "test objective (not a bound)" if short.guide == "delta" else "test ELBO"
    assert label in captured.out and ("test ELBO" in captured.out) == (short.guide != "delta")
    assert run.config.model.short == dataclasses.replace(short, levels=run.config.model.short.levels)
    assert isinstance(getattr(run.model.nets["x"], "net", None), TiedDecoder) == spec.tied
    assert (run.model.contractive is not None) == (spec.contractive > 0)
    assert type(run.model.corruption) is type(CORRUPTIONS[spec.corruption](spec.corruption_level))
    metrics = run.metrics
    assert math.isfinite(metrics["elbo"])
    if plots:
        assert (out / "plots" / "reconstructions.png").exists() and (out / "plots" / "samples.png").exists()


def test_untied_contractive_from_the_cli_warns(tmp_path, capsys):
    with pytest.warns(DegenerateObjectiveWarning):
        code = cli_main(["train", str(EXAMPLES / "ae_contractive.toml"), "--set", "train.epochs=1",
                         "--set", "model.tied=false", "--out", str(tmp_path / "r"), "--quiet", "--iw-samples", "5",
                         "--no-plots"])
    assert code == 0


def test_bernoulli_on_grey_levels_is_an_error_that_names_the_fix(tmp_path, capsys):
    out = tmp_path / "r"
    code = cli_main(["train", str(EXAMPLES / "ae_undercomplete.toml"), "--set", "model.likelihood=bernoulli",
                     "--set", "data.binarize=none", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "continuous_bernoulli" in err and "binarize" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # failed before writing anything
    assert is_validation_enabled()  # and not by switching validation off


def test_python_declaration_trains(tmp_path):
    # The same family member declared in Python instead of TOML, trained with the library API.
    cfg = pv.Config(
        data=pv.DataConfig(source="digits"),
        model=ModelConfig(latent_dim=4, guide="delta", prior="laplace", sparsity=5.0, tied=True, contractive=0.1,
                          corruption="salt_and_pepper", corruption_level=0.1, likelihood="normal", scale=0.1,
                          encoder=NetConfig((32,)), decoder=NetConfig((32,))),
        train=pv.TrainConfig(epochs=1, batch_size=64),
    )
    run = pv.train(cfg, tmp_path / "r", progress=False, iw_samples=None, plots=False)
    assert math.isfinite(run.history[-1]["train_loss"])
    again = pv.load_run(tmp_path / "r")
    x = run.data.test[:5]
    assert torch.allclose(again.model.encode(x), run.model.encode(x))
    assert torch.allclose(again.model.decode(again.model.encode(x)), run.model.decode(run.model.encode(x)))


# ---------------------------------------------------------------------------
# the comparison script


def _load_compare():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_autoencoders", EXAMPLES / "compare_autoencoders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_comparison(out, models):
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip() for r in rows] == models
    assert (out / "reconstructions.png").stat().st_size > 0
    import json

    results = json.loads((out / "results.json").read_text())
    for r in results:
        assert math.isfinite(r["objective"]) and r["reconstruction_error"] > 0
        assert 0 <= r["code_sparsity"] <= 1 and 0 <= r["active_units"] <= r["latent_dim"]


@pytest.mark.slow
def test_compare_autoencoders_writes_table_and_figure(tmp_path, capsys):
    models = ["ae_undercomplete", "ae_contractive", "vae_gaussian"]
    assert _load_compare().main(["--epochs", "1", "--models", *models, "--out", str(tmp_path)]) == 0
    _check_comparison(tmp_path, models)


@pytest.mark.slow
def test_compare_autoencoders_whole_family(tmp_path, capsys):
    module = _load_compare()
    assert module.main(["--epochs", "2", "--out", str(tmp_path)]) == 0
    _check_comparison(tmp_path, list(module.FAMILY))
