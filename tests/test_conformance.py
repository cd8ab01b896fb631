"""The conformance suite: every model the library can train must pass the same checks.

Like scikit-learn's estimator checks, one parametrized suite runs over every registered model
form (the one-latent keys and a graph) crossed with every likelihood and guide, plus a user-written model
(examples/custom_model.py: plain Pyro with ``pyro.module``/``pyro.param``, not an ``nn.Module``).
A new registered model type, likelihood or guide joins the suite without editing it.

Checks: empty data and NaN are rejected in one clear error before anything changes; integer,
boolean and float64 input trains exactly like float32 input (the cast is exact); a checkpoint
round trip restores every parameter and continues bit-exactly; evaluation changes no parameter,
no optimizer state and no RNG stream; the same seed gives the same run and another seed another.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import pyro

import pyro_vae
from pyro_vae import GUIDE_LAWS, LIKELIHOODS, TrainConfig, evaluate
from pyro_vae.store.checkpoint import load_checkpoint
from pyro_vae.config import ModelConfig, NetConfig, NodeConfig
from pyro_vae.data.arrays import as_matrix
from pyro_vae.data.sources import COUNT_LIKELIHOODS
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluation.estimators import test_elbo as elbo_on_test
from pyro_vae.models import build_model
from pyro_vae.training.trainer import Trainer

D = 6  # data columns
N = 64  # rows: 4 minibatches of 16
LEVELS = 3  # categorical levels
#: the likelihoods every matrix runs: all but zip and negative_binomial, whose code paths zinb runs (its gate and its
#: dispersion), so the count laws add a third of what they would to the quick suite's time
MATRIX_LIKELIHOODS = [lik for lik in LIKELIHOODS.names() if lik not in ("zip", "negative_binomial")]

EXAMPLE = Path(pyro_vae.__file__).resolve().parents[1] / "examples" / "custom_model.py"


def _data_for(likelihood: str):
    """Data in the likelihood's support, as float32 (rows, D), from a seed."""
    def make(seed: int, n: int = N) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if likelihood == "bernoulli":
            return (torch.rand(n, D, generator=g) > 0.5).float()
        if likelihood == "continuous_bernoulli":
            return torch.rand(n, D, generator=g).clamp(0.02, 0.98)
        if likelihood == "categorical":
            return torch.randint(0, LEVELS, (n, D), generator=g).float()
        if likelihood in COUNT_LIKELIHOODS:  # counts, no row of zeros (a multinomial refuses one)
            x = torch.poisson(torch.full((n, D), 2.0), generator=g)
            x[:, 0] += 1
            return x
        return torch.randn(n, D, generator=g)

    return make


@dataclass
class Case:
    id: str
    build: Callable[[], object]  # a freshly initialised model (draws its init from the torch RNG)
    data: Callable[..., torch.Tensor]
    integer_data: bool = False  # data are integers, so int64 input is exact
    slow: bool = False  # run by ``pytest -m slow`` only (in_quick_suite)

    def fresh(self, seed: int = 0):
        # user models keep parameters in Pyro's global param store: a fresh model needs a fresh store
        pyro.clear_param_store()
        torch.manual_seed(seed)
        return self.build()


def graph_spec(likelihood: str, structure: str = "structured") -> ModelConfig:
    """A two-layer hierarchy z2 -> z1 -> x declared as a graph (the graph type's guide is its structure)."""
    net = NetConfig((8,))
    return ModelConfig(guide_structure=structure, nodes={
        "z2": NodeConfig(dim=2, encoder=net),
        "z1": NodeConfig(dim=2, parents=("z2",), net=net, encoder=net),
        "x": NodeConfig(role="observed", likelihood=likelihood, parents=("z1",), net=net,
                        levels=LEVELS if likelihood == "categorical" else None)})


def _graph_case(likelihood: str, structure: str, slow: bool = False) -> Case:
    spec = graph_spec(likelihood, structure)
    return Case(f"graph-{likelihood}-{structure}", lambda: build_model(spec, D), _data_for(likelihood),
                integer_data=likelihood in ("bernoulli", "categorical"), slow=slow)


#: the declared model's two forms: the one-latent keys (one spec per likelihood and guide law) and a graph (one per
#: likelihood and guide structure); both compile to the one graph model
FORMS = ("one-latent", "graph")


#: the guide laws run with every likelihood (the others with bernoulli's)
EVERY_LIKELIHOOD = ("normal", "delta")

#: the quick suite's share of the matrix: these likelihoods with both laws and both structures; the rest of the
#: matrix (the count laws, the other guide laws) is marked slow, and CI runs it with ``pytest -m slow``. The count
#: laws and the guide laws are also taken through train, resume, evaluate and diagnose by their own files
#: (test_counts.py, test_gaussian_guides.py, test_flow_guides.py), which are quick
QUICK_LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "normal", "laplace", "categorical")


def in_quick_suite(likelihood: str, guide: str) -> bool:
    """Whether the matrix's (likelihood, guide law or structure) case runs in the quick suite."""
    return likelihood in QUICK_LIKELIHOODS and guide in EVERY_LIKELIHOOD + ("structured", "mean-field")


def _builtin_cases(form: str, likelihood: str):
    if form == "graph":
        return [_graph_case(likelihood, s, slow=not in_quick_suite(likelihood, s)) for s in ("structured", "mean-field")]
    # a guide law and the likelihood are independent (the encoder's law, the decoder's): the laws beyond the two
    # first run on one likelihood here (the suite's time); tests/test_flow_guides.py and test_gaussian_guides.py
    # take each through train, resume, evaluate and diagnose
    return [_builtin_case(form, likelihood, g) for g in GUIDE_LAWS.names()
            if g in EVERY_LIKELIHOOD or likelihood == "bernoulli"]


def _builtin_case(form: str, likelihood: str, guide: str) -> Case:
    spec = ModelConfig(likelihood=likelihood, guide=guide, latent_dim=2,
                       levels=LEVELS if likelihood == "categorical" else None,
                       encoder=NetConfig((8,)), decoder=NetConfig((8,)))
    return Case(f"{form}-{likelihood}-{guide}", lambda: build_model(spec, D), _data_for(likelihood),
                integer_data=likelihood in ("bernoulli", "categorical"), slow=not in_quick_suite(likelihood, guide))


def _user_model_class():
    """The example's hand-written model, or (if the example is gone) an equivalent one here."""
    if EXAMPLE.exists():
        spec = importlib.util.spec_from_file_location("custom_model_example", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.StudentTFactorModel
    import pyro.distributions as dist
    from pyro.distributions import constraints

    class UserModel:
        latent_sites = ("z",)
        obs_site = "x"

        def __init__(self, data_dim, latent_dim=2, hidden=8):
            self.latent_dim, self.data_dim = latent_dim, data_dim
            self.decoder = torch.nn.Sequential(torch.nn.Linear(latent_dim, hidden), torch.nn.Tanh(),
                                               torch.nn.Linear(hidden, data_dim))
            self.encoder = torch.nn.Linear(data_dim, 2 * latent_dim)

        def model(self, x):
            pyro.module("decoder", self.decoder)
            sigma = pyro.param("sigma", torch.ones(self.data_dim), constraint=constraints.positive)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
                pyro.sample("x", dist.Normal(self.decoder(z), sigma).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.encoder(x).split(self.latent_dim, -1)
                pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3).to_event(1))

    return UserModel


def _cases():
    cases = [c for t in FORMS for lik in MATRIX_LIKELIHOODS for c in _builtin_cases(t, lik)]
    user = _user_model_class()
    cases.append(Case("user-" + user.__name__, lambda: user(D, latent_dim=2, hidden=8), _data_for("normal")))
    return cases


CASES = _cases()


@pytest.fixture(params=[pytest.param(c, marks=pytest.mark.slow) if c.slow else c for c in CASES],
                ids=[c.id for c in CASES])
def case(request) -> Case:
    return request.param


# -- helpers ------------------------------------------------------------------------------------------


def _config(seed=0, epochs=2) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, seed=seed)


def _fit(case: Case, x, *, seed=0, epochs=2, init_seed=0, run_dir=None):
    model = case.fresh(init_seed)
    trainer = Trainer(model, _config(seed, epochs), run_dir=run_dir, progress=False)
    trainer.fit(x, case.data(99, 16))
    return trainer


def _params(trainer):
    return [p.detach().clone() for p in trainer.params]


def _curve(trainer):
    return [(h["train_loss"], h["test_elbo"]) for h in trainer.state.history]


def _same_params(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _module_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()} if isinstance(model, torch.nn.Module) else {}


def _store_state():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _no_metric_time(m: dict) -> dict:
    return {k: v for k, v in m.items() if "seconds" not in k}


# -- the checks ---------------------------------------------------------------------------------------


def test_empty_data_is_rejected_in_one_line(case):
    model = case.fresh()
    with pytest.raises(PyroVAEError, match="non-empty"):
        Trainer(model, _config(), progress=False).fit(torch.empty(0, D))
    with pytest.raises(PyroVAEError, match="non-empty"):
        evaluate(model, torch.empty(0, D), iw_samples=4)
    with pytest.raises(PyroVAEError, match="empty"):
        as_matrix(np.empty((0, D), np.float32), "data")


def test_nan_is_rejected_before_anything_changes(case):
    model = case.fresh()
    x = case.data(0)
    x[5, 2] = float("nan")
    before = (_module_state(model), _store_state())
    with pytest.raises(PyroVAEError, match=r"1 NaN/Inf values in 1 rows \(first at row 5, column 2\)"):
        Trainer(model, _config(), progress=False).fit(x)
    after = (_module_state(model), _store_state())
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1].keys() == after[1].keys()
    with pytest.raises(PyroVAEError, match="row 5, column 2"):
        as_matrix(x.numpy(), "data")


def test_nan_is_rejected_by_evaluate(case):
    model = case.fresh()
    x = case.data(0)
    x[5, 2] = float("nan")
    with pytest.raises(PyroVAEError, match=r"1 NaN/Inf values in 1 rows \(first at row 5, column 2\)"):
        evaluate(model, x, iw_samples=4)


def test_integer_bool_and_float64_input_train_exactly_like_float32(case):
    x = case.data(0)
    ref = _fit(case, x, epochs=1)
    variants = {"float64": x.double()}
    if case.integer_data:
        variants["int64"] = x.long()
    if set(x.unique().tolist()) <= {0.0, 1.0}:
        variants["bool"] = x.bool()
    for name, xv in variants.items():
        t = _fit(case, xv, epochs=1)
        assert _curve(t) == _curve(ref), name
        assert _same_params(_params(t), _params(ref)), name
    # the loaders cast too, and say so
    notes = []
    as_matrix(x.double().numpy(), "data", notes=notes)
    assert notes == ["data: cast from float64 to float32"]
    # evaluation casts its input the same way
    m64 = evaluate(ref.model, x.double(), iw_samples=4, seed=1)
    m32 = evaluate(ref.model, x, iw_samples=4, seed=1)
    assert _no_metric_time(m64) == _no_metric_time(m32)


def test_checkpoint_round_trip_restores_everything_and_continues_exactly(case, tmp_path):
    x = case.data(0)
    straight = _fit(case, x, epochs=2)
    want_params, want_curve = _params(straight), _curve(straight)
    want_metrics = evaluate(straight.model, x, iw_samples=4, seed=3)

    _fit(case, x, epochs=1, run_dir=tmp_path)
    payload = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only: plain tensors and values
    assert payload["train_state"]["epoch"] == 1
    # a fresh model with another initialisation, loaded from the checkpoint, continues exactly
    model = case.fresh(7)
    resumed = Trainer(model, _config(epochs=2), progress=False)
    resumed.setup(x[:16], len(x))
    resumed.load_state_dict(payload, tmp_path / "checkpoint.pt")
    resumed.fit(x, case.data(99, 16))
    assert _same_params(_params(resumed), want_params)
    assert _curve(resumed) == want_curve
    assert _no_metric_time(evaluate(model, x, iw_samples=4, seed=3)) == _no_metric_time(want_metrics)


def test_evaluation_changes_no_parameter_optimizer_state_or_rng_stream(case):
    x = case.data(0)
    t = _fit(case, x, epochs=1)
    params = _params(t)
    opt = t.optimizer.state_dict()
    opt_tensors = [v.clone() for s in opt["state"].values() for v in s.values() if torch.is_tensor(v)]
    rng = torch.get_rng_state()
    training = t.model.training if isinstance(t.model, torch.nn.Module) else None

    first = evaluate(t.model, x, iw_samples=8, seed=5)
    elbo_on_test(t.model, x, seed=5)
    again = evaluate(t.model, x, iw_samples=8, seed=5)

    assert _same_params(_params(t), params)
    now = [v for s in t.optimizer.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v)]
    assert len(now) == len(opt_tensors) and all(torch.equal(a, b) for a, b in zip(now, opt_tensors))
    assert torch.equal(torch.get_rng_state(), rng)
    if training is not None:
        assert t.model.training == training
    assert _no_metric_time(first) == _no_metric_time(again)  # evaluation is a function of its seed


def test_same_seed_same_run_other_seed_another(case):
    x = case.data(0)
    a, b = _fit(case, x, seed=1, epochs=1), _fit(case, x, seed=1, epochs=1)
    assert _curve(a) == _curve(b)
    assert _same_params(_params(a), _params(b))
    c = _fit(case, x, seed=2, epochs=1)
    assert _curve(c) != _curve(a)
    assert not _same_params(_params(c), _params(a))
