"""The inference gap split against probabilistic PCA, whose posterior is a correlated Gaussian in closed form.

z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I) at fixed, hand-set weights: p(x) = N(b, W W^T + s^2 I), the posterior
has precision Lambda = I + W^T W / s^2, so the fullrank family holds it (approximation gap 0) and the best
diagonal Gaussian misses it by KL = 1/2 (sum_i log Lambda_ii - log det Lambda) per point, whatever x is.  The
encoder is set off the posterior on purpose (its mean shrunk, its scale wrong): the amortization gap is then
positive.  Tolerances: the gaps get 2 of the standard errors the split reports (the totals over the points);
log p(x), a Monte Carlo estimate checked per point as well, gets 4 (as tests/test_diagnostics.py's do).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import pyro

from pyro_vae import DiagnoseSettings, PyroVAEError, build_model, config_from_dict
from pyro_vae.cli import main
from pyro_vae.diagnostics.gaps import RICHER, inference_gaps, log_px_estimate
from pyro_vae.diagnostics.local_flow import LocalFlowLaw
from pyro_vae.models.params import model_params, scratch_params

from one_latent import decoder_net, encoder_net

D, SIGMA, POINTS = 5, 0.5, 8
SETTINGS = dict(draws=2000, local_steps=300, local_lr=0.05, local_particles=64, seed=0)


def _linear(module) -> torch.nn.Linear:
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 1
    return layers[0]


class PPCA:
    """pPCA's weights, data and closed forms: a posterior correlation of about 0.6."""

    def __init__(self, seed=0):
        g = np.random.default_rng(seed)
        u, _ = np.linalg.qr(g.normal(size=(D, 2)))
        angle = np.deg2rad(40)
        self.W = np.stack([1.5 * u[:, 0], 1.5 * (np.cos(angle) * u[:, 0] + np.sin(angle) * u[:, 1])], 1)
        self.b = g.normal(size=D)
        self.L = np.eye(2) + self.W.T @ self.W / SIGMA ** 2
        self.S = np.linalg.inv(self.L)
        self.rho = self.S[0, 1] / math.sqrt(self.S[0, 0] * self.S[1, 1])
        z = g.normal(size=(POINTS, 2))
        self.x = z @ self.W.T + self.b + SIGMA * g.normal(size=(POINTS, D))

    def diagonal_gap(self) -> float:
        """KL of the best diagonal Gaussian to the posterior: 1/2 (sum log Lambda_ii - log det Lambda)."""
        return 0.5 * (np.log(np.diag(self.L)).sum() - np.linalg.slogdet(self.L)[1])

    def log_px(self) -> np.ndarray:
        cov = self.W @ self.W.T + SIGMA ** 2 * np.eye(D)
        r = self.x - self.b
        return -0.5 * (D * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1]
                       + np.einsum("ij,jk,ik->i", r, np.linalg.inv(cov), r))

    def build(self, guide: str):
        cfg = config_from_dict({"model": {"latent_dim": 2, "likelihood": "normal", "scale": SIGMA, "guide": guide,
                                          "encoder": {"hidden": []}, "decoder": {"hidden": []}}})
        pyro.set_rng_seed(0)
        model = build_model(cfg.model, D)
        with torch.no_grad():
            dec = _linear(decoder_net(model))
            dec.weight.copy_(torch.tensor(self.W))
            dec.bias.copy_(torch.tensor(self.b))
            enc = _linear(encoder_net(model))
            a = 0.7 * self.S @ self.W.T / SIGMA ** 2  # the posterior mean's map, shrunk: an encoder off the mark
            enc.weight.zero_()
            enc.bias.zero_()
            enc.weight[:2] = torch.tensor(a)
            enc.bias[:2] = torch.tensor(-a @ self.b)
        return model.eval()


@pytest.fixture(scope="module")
def ppca():
    p = PPCA()
    assert 0.5 < abs(p.rho) < 0.7 and p.diagonal_gap() > 0.1
    return p


def _gaps(model, x, richer=RICHER, **changes):
    with model_params(model), scratch_params():
        return inference_gaps(model, x, list(range(len(x))), DiagnoseSettings(**dict(SETTINGS, **changes)),
                              richer=richer)


@pytest.fixture(scope="module")
def diagonal(ppca):
    return _gaps(ppca.build("normal"), torch.tensor(ppca.x, dtype=torch.float32))


@pytest.mark.slow
def test_log_px_is_the_exact_marginal(ppca, diagonal):
    exact = ppca.log_px()
    z = (diagonal.log_px - exact) / diagonal.log_px_se
    assert np.all(np.abs(z) < 4), z
    assert abs(diagonal.total_log_px - exact.mean()) < 4 * diagonal.total_log_px_se


@pytest.mark.slow
def test_the_diagonal_approximation_gap_is_the_closed_form(ppca, diagonal):
    own = diagonal.own
    assert own.family == "normal"
    assert abs(own.total_approximation - ppca.diagonal_gap()) < 2 * own.total_approximation_se, (
        own.total_approximation, ppca.diagonal_gap(), own.total_approximation_se)
    # the encoder was set off the posterior: what it misses within its family is clearly positive
    assert own.total_amortization > 10 * own.total_amortization_se
    # the parts add up, per point
    assert np.allclose(diagonal.inference, own.approximation + own.amortization)


@pytest.mark.slow
def test_the_fullrank_family_holds_the_posterior(ppca, diagonal):
    full = diagonal.richer[0]
    assert full.family == "fullrank"
    assert abs(full.total_approximation) < 2 * full.total_approximation_se, (full.total_approximation,
                                                                             full.total_approximation_se)
    assert diagonal.log_px_proposal == "fullrank"


@pytest.mark.slow
def test_a_fullrank_guide_has_no_approximation_gap(ppca):
    # its fit starts further off (the encoder's Cholesky is untrained): twice the steps reach the same floor
    gaps = _gaps(ppca.build("fullrank"), torch.tensor(ppca.x, dtype=torch.float32), local_steps=600)
    assert gaps.own.family == "fullrank" and not gaps.richer  # fullrank is its own richer family
    assert abs(gaps.own.total_approximation) < 2 * gaps.own.total_approximation_se
    assert abs(gaps.total_log_px - ppca.log_px().mean()) < 4 * gaps.total_log_px_se


@pytest.mark.slow
def test_the_per_point_flow_family_lies_between_nothing_and_the_diagonal(ppca):
    """The flow q* (a Gaussian through affine autoregressive transforms, warm-started at the diagonal q*) can hold
    the correlated posterior: its approximation gap is >= 0 and no more than the diagonal family's, within 2 s.e."""
    gaps = _gaps(ppca.build("normal"), torch.tensor(ppca.x, dtype=torch.float32), richer=("iaf",))
    own, flow = gaps.own, gaps.richer[0]
    assert flow.family == "iaf"
    assert flow.total_approximation > -2 * flow.total_approximation_se, (flow.total_approximation,
                                                                         flow.total_approximation_se)
    bound = own.total_approximation + 2 * math.hypot(own.total_approximation_se, flow.total_approximation_se)
    assert flow.total_approximation <= bound, (flow.total_approximation, own.total_approximation)
    # and it closes most of the diagonal's gap, which the closed form puts clearly above 0
    assert flow.total_approximation < 0.5 * ppca.diagonal_gap()


def test_the_per_point_flow_starts_exactly_at_its_warm_start():
    """Its transforms start as the identity: q is N(loc, diag scale^2) until the fit moves them."""
    torch.manual_seed(0)
    law = LocalFlowLaw(SimpleNamespace(dim=3, flows=2, flow_hidden=None))  # a node's flow keys
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.5
    q = law.law(law.warm_start(loc, scale), 3)
    z = torch.randn(7, 4, 3)
    expected = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    assert torch.allclose(q.log_prob(z), expected, atol=1e-5)
    assert sum(p.numel() for p in law.parameters()) > 0  # the transforms are there to fit


def test_log_px_estimate_of_exact_weights_is_exact():
    lw = np.full((50, 3), -2.5)
    est, se, _ = log_px_estimate(lw)
    assert np.allclose(est, -2.5) and np.allclose(se, 0)


def test_a_point_mass_guide_has_no_gaps_to_split(ppca):
    model = ppca.build("delta")
    with pytest.raises(PyroVAEError, match="point mass"):
        _gaps(model, torch.tensor(ppca.x[:2], dtype=torch.float32), local_steps=1)


def test_the_split_adds_up_on_a_quick_fit(ppca):
    """The plumbing, in a few steps: inference = approximation + amortization for each family, point by point."""
    gaps = _gaps(ppca.build("normal"), torch.tensor(ppca.x[:3], dtype=torch.float32),
                 draws=50, local_steps=4, local_particles=2)
    assert [s.family for s in gaps.splits()] == ["normal", "fullrank"]
    for s in gaps.splits():
        assert np.allclose(gaps.inference, s.approximation + s.amortization)
        assert s.elbo.shape == (3,) and np.all(s.amortization >= 0)  # q* is never worse than the encoder's q
    assert gaps.points == [0, 1, 2] and np.all(np.isfinite(gaps.log_px_se))


# ---------------------------------------------------------------------------
# evaluate --gaps


@pytest.fixture(scope="module")
def lowrank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gap_runs") / "lowrank"
    code = main(["train", "--quiet", "--no-plots", "--out", str(out), "--iw-samples", "20",
                 "--set", "train.epochs=1", "--set", "model.latent_dim=3", "--set", "model.guide=\"lowrank\"",
                 "--set", "model.rank=1", "--set", "model.encoder.hidden=[16]", "--set", "model.decoder.hidden=[16]"])
    assert code == 0
    return out


def test_evaluate_gaps_json(lowrank_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(lowrank_run), "--iw-samples", "20", "--gaps", "--gap-points", "3",
                 "--gap-steps", "3", "--gap-draws", "30", "--json", "--quiet"]) == 0
    gaps = json.loads(capsys.readouterr().out)["gaps"]
    assert gaps["points"] == [0, 1, 2] and gaps["own"]["family"] == "lowrank"
    assert [s["family"] for s in gaps["richer"]] == ["fullrank"]
    total = gaps["own"]["total_approximation"] + gaps["own"]["total_amortization"]
    assert math.isclose(total, gaps["total_inference"], rel_tol=1e-9, abs_tol=1e-9)


def test_evaluate_gaps_text(lowrank_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(lowrank_run), "--iw-samples", "20", "--gaps", "--gap-points", "2",
                 "--gap-steps", "2", "--gap-draws", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "inference gap split on 2 points" in out and "lowrank (own)" in out and "fullrank" in out


def test_evaluate_gaps_with_the_flow_family(lowrank_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(lowrank_run), "--iw-samples", "20", "--gaps", "--gap-points", "2",
                 "--gap-steps", "2", "--gap-draws", "20", "--gap-richer", "fullrank,iaf", "--json", "--quiet"]) == 0
    gaps = json.loads(capsys.readouterr().out)["gaps"]
    assert [s["family"] for s in gaps["richer"]] == ["fullrank", "iaf"]
    assert all(math.isfinite(s["total_approximation"]) for s in gaps["richer"])


@pytest.mark.parametrize("args, words", [
    (["--gap-points", "0"], "--gap-points must be >= 1"),
    (["--gap-draws", "5"], "--gap-draws must be >= 20"),
    (["--gap-richer", "fullrank,iafx"], "unknown family 'iafx'; did you mean 'iaf'?"),
])
def test_evaluate_gaps_bad_flags_are_one_line(lowrank_run, capsys, args, words):
    capsys.readouterr()
    assert main(["evaluate", str(lowrank_run), "--gaps", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.count("\n") == 0 and err.startswith("pyro-vae: error:")


def test_evaluate_gaps_of_a_point_mass_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "ae"
    assert main(["train", "--quiet", "--no-plots", "--out", str(out), "--iw-samples", "5", "--set", "train.epochs=1",
                 "--set", "model.guide=\"delta\"", "--set", "model.latent_dim=2",
                 "--set", "model.encoder.hidden=[8]", "--set", "model.decoder.hidden=[8]"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--gaps"]) == 2
    captured = capsys.readouterr()
    assert "point mass" in captured.err and captured.err.count("\n") == 1 and captured.out == ""


# ---------------------------------------------------------------------------
# diagnose --gaps and the side-by-side report


@pytest.fixture(scope="module")
def gap_report(tmp_path_factory, lowrank_run):
    root = tmp_path_factory.mktemp("gap_report")
    full = root / "fullrank"
    assert main(["train", "--quiet", "--no-plots", "--out", str(full), "--iw-samples", "20",
                 "--set", "train.epochs=1", "--set", "model.latent_dim=3", "--set", "model.guide=\"fullrank\"",
                 "--set", "model.encoder.hidden=[16]", "--set", "model.decoder.hidden=[16]"]) == 0
    out = root / "report"
    assert main(["report", str(lowrank_run), str(full), "--out", str(out), "--gaps", "--points", "2",
                 "--local-steps", "2", "--draws", "20", "--reference", "none", "--sbc-sims", "0", "--quiet"]) == 0
    return out


def test_report_shows_the_runs_side_by_side(gap_report):
    from pyro_vae import load_diagnosis
    page = (gap_report / "index.html").read_text()
    assert 'id="table-side_by_side"' in page and 'data-file="gaps.png"' in page.replace("figures/", "")
    diagnosis = load_diagnosis(gap_report)  # the split survives diagnostics.json
    families = [[s.family for s in r.gaps.splits()] for r in diagnosis.runs]
    assert families == [["lowrank", "fullrank"], ["fullrank"]]
    results = json.loads((gap_report / "results.json").read_text())
    table = next(t for t in results["tables"] if t["id"] == "side_by_side")
    assert len(table["rows"]) == 2 and all(row[4] is not None for row in table["rows"])  # log p(x) of each run


def test_a_run_without_the_split_leaves_its_columns_empty(gap_report, tmp_path):
    from pyro_vae import load_diagnosis
    from pyro_vae.report.tables import build_tables
    diagnosis = load_diagnosis(gap_report)
    diagnosis.runs[1].gaps = None
    table = next(t for t in build_tables(diagnosis) if t.id == "side_by_side")
    assert table.rows[1][4:12] == [None] * 8 and table.rows[0][4] is not None


def test_a_structured_guide_is_one_line():
    from pyro_vae.config import ModelConfig, NetConfig, NodeConfig
    net = NetConfig((4,))
    spec = ModelConfig(nodes={"z1": NodeConfig(dim=2, encoder=net), "z2": NodeConfig(dim=2, parents=("z1",),
                                                                                      encoder=net, net=net),
                              "x": NodeConfig(role="observed", likelihood="normal", scale=1.0, parents=("z2",),
                                              net=net)})
    model = build_model(spec, D).eval()
    with pytest.raises(PyroVAEError, match="also reads z2.*mean-field"):
        _gaps(model, torch.zeros(2, D), local_steps=1)
