"""Step capture (pyro_vae/training/capture.py): a recorded step computes what Pyro computes, or is not used.

The recording replaces the Pyro program only for the models it can stand for, so the checks are:
training with it equals training without it (every model type x likelihood x guide, the
autoencoder family's options, the three objectives, KL warm-up, several particles); it leaves the
random streams alone; what it cannot follow (Python that branches on data, hooks, replaced
methods, param-store parameters, user classes under "auto") runs eagerly; and with the private
torch APIs switched off training takes the public path and still trains the same; and the direct
fused-Adam call is bit-identical to ``Optimizer.step``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import pyro
import pyro.distributions as dist

from pyro_vae import GUIDE_LAWS, LIKELIHOODS, TrainConfig
from pyro_vae.errors import CaptureWarning
from pyro_vae.training import capture
from pyro_vae.training.capture import why_not_capturable
from pyro_vae.config import ModelConfig, NetConfig, NodeConfig
from pyro_vae.data import batch
from pyro_vae.errors import PyroVAEError
from pyro_vae.models import build_model
from pyro_vae.errors import NonFiniteError
from pyro_vae.training._torch_private import fused_adam_step
from pyro_vae.training.optim import make_adam
from pyro_vae.training.trainer import Trainer

# the conformance suite's data, likelihoods and graph
from test_conformance import D, FORMS, LEVELS, MATRIX_LIKELIHOODS, _data_for, graph_spec, in_quick_suite


def data_for(likelihood: str, n: int = 64, seed: int = 0) -> torch.Tensor:
    return _data_for(likelihood)(seed, n)


def spec(**kw) -> ModelConfig:
    base = dict(latent_dim=2, encoder=NetConfig((8,)), decoder=NetConfig((8,)))
    base.update(kw)
    if base.get("likelihood") == "categorical":
        base["levels"] = LEVELS
    return ModelConfig(**base)


def train(model_spec: ModelConfig, x, capture: str, **train_kw):
    torch.manual_seed(0)
    x = batch.named(x, "x")  # one tensor, or named arrays whose observations are "x"
    model = build_model(model_spec, x["x"].shape[1])
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=1, capture=capture, **train_kw)
    trainer = Trainer(model, cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureWarning)  # a built-in model must be captured
        trainer.fit(batch.rows(x, slice(0, 56)))  # 3 full batches and a short one: two recordings
    return trainer


def assert_same_training(a: Trainer, b: Trainer):
    for name, p, q in zip(a.param_names, a.params, b.params):
        # the replay runs the recorded ATen ops in the recorded order; only the interpreter
        # differs, and float32 rounding is the most that may move: the rule the recorder checks
        assert capture.agree(p, q), name
    for ha, hb in zip(a.state.history, b.state.history):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=capture.RTOL)


def recorded(trainer: Trainer) -> int:
    return len(trainer.captured_shapes)


#: both declared forms x likelihood x guide: the one-latent form's guide law, a graph's guide structure (a law
#: that declines capture, the spline flow, is tested in tests/test_flow_guides.py: it says so and trains eagerly)
MATRIX = [(t, lik, g) for t in FORMS for lik in MATRIX_LIKELIHOODS
          for g in (("structured", "mean-field") if t == "graph" else
                    [n for n in GUIDE_LAWS.names() if not getattr(GUIDE_LAWS[n], "capture_problem", None)
                     and (n in ("normal", "delta") or lik == "bernoulli")])]  # other laws: one likelihood (time)


def _spec(form, likelihood, guide) -> ModelConfig:
    if form == "graph":
        return graph_spec(likelihood, guide)
    return spec(likelihood=likelihood, guide=guide)


@pytest.mark.parametrize("model_type,likelihood,guide",
                         [pytest.param(*c, marks=() if in_quick_suite(c[1], c[2]) else pytest.mark.slow) for c in MATRIX],
                         ids=["-".join(c) for c in MATRIX])
def test_captured_training_equals_eager_training(model_type, likelihood, guide):
    s = _spec(model_type, likelihood, guide)
    x = data_for(likelihood)
    a, b = train(s, x, "auto"), train(s, x, "off")
    assert recorded(a) == 2 and recorded(b) == 0  # the full batches' shape and the short one's
    assert_same_training(a, b)


VARIANTS = {
    "amortized-scale": (dict(likelihood="normal", scale="amortized"), {}),
    "isotropic-scale": (dict(likelihood="laplace", scale="learned_isotropic"), {}),
    "denoising-masking": (dict(likelihood="bernoulli", corruption="masking", corruption_level=0.3), {}),
    "denoising-gaussian": (dict(likelihood="normal", corruption="gaussian", corruption_level=0.2), {}),
    "contractive-tied": (dict(likelihood="normal", guide="delta", contractive=0.1, tied=True), {}),
    "sparse": (dict(likelihood="bernoulli", guide="delta", prior="laplace", sparsity=2.0, tied=True), {}),
    "beta": (dict(likelihood="bernoulli"), dict(beta=4.0)),
    "kl-warmup": (dict(likelihood="bernoulli"), dict(kl_warmup_epochs=2)),
    "trace": (dict(likelihood="bernoulli"), dict(elbo="trace")),
    "iwae-5": (dict(likelihood="bernoulli"), dict(elbo="iwae", num_particles=5)),
    "meanfield-3-particles": (dict(likelihood="normal"), dict(num_particles=3)),
}


def test_a_conditional_graph_on_named_data_is_captured_and_trains_as_eagerly():
    """A CVAE's batches are named arrays (x and its label y): each array is an input of the recording."""
    net = NetConfig((8,))
    s = ModelConfig(nodes={"y": NodeConfig(role="input", family="categorical", dim=3),
                           "z": NodeConfig(dim=2, parents=("y",), net=net, encoder=net),
                           "x": NodeConfig(role="observed", likelihood="normal", parents=("z", "y"), net=net)})
    x = {"x": data_for("normal"), "y": torch.arange(64) % 3}
    a, b = train(s, x, "auto"), train(s, x, "off")
    assert recorded(a) == 2 and recorded(b) == 0
    assert_same_training(a, b)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_captured_training_equals_eager_for_the_family_and_the_objectives(name):
    model_kw, train_kw = VARIANTS[name]
    s = spec(**model_kw)
    x = data_for(s.nodes["x"].likelihood)
    a, b = train(s, x, "auto", **train_kw), train(s, x, "off", **train_kw)
    # warm-up changes beta every step: beta is a graph input, so still one recording per shape
    assert recorded(a) == 2
    assert_same_training(a, b)


def test_recording_leaves_every_random_stream_where_it_was():
    x = data_for("bernoulli")
    t = Trainer(build_model(spec(likelihood="bernoulli"), D), TrainConfig(batch_size=16), progress=False)
    t.setup(x[:16], len(x))
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with pyro.validation_enabled(False):  # as inside fit, after the first step
        assert t.record(x[:16]) is not None
    assert torch.equal(before, torch.get_rng_state())


def test_each_replay_draws_fresh_noise():
    x = data_for("normal")[:16]
    t = Trainer(build_model(spec(likelihood="normal"), D), TrainConfig(batch_size=16), progress=False)
    t.setup(x, len(x))
    with pyro.validation_enabled(False):
        step = t.record(x)
        first, second = step(x)[0], step(x)[0]
    assert float(first) != float(second)  # the reparameterized draw is in the recording, not a constant


class Branching(torch.nn.Module):
    """A user model whose program changes through Python state a recording cannot see."""

    latent_sites, obs_site = ("z",), "x"

    def __init__(self, reads_data=False):
        super().__init__()
        self.dec = torch.nn.Linear(2, D)
        self.enc = torch.nn.Linear(D, 4)
        self.likelihood = LIKELIHOODS["normal"](D, 1.0, None)
        self.reads_data = reads_data
        self.calls = 0

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            if self.reads_data:
                scale = 0.5 if float(x[0, 0]) > 0 else 2.0  # a value read back into Python
            else:
                scale = 0.5 if self.calls % 2 else 2.0  # Python state: alternates between calls
            self.calls += 1
            pyro.sample("x", dist.Normal(self.dec(z), scale).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(x).split(2, -1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3).to_event(1))


@pytest.mark.parametrize("reads_data,why", [(False, "differs"), (True, "could not be recorded")],
                         ids=["python-state-caught-by-the-check", "value-read-refused-by-the-recorder"])
def test_a_program_a_recording_cannot_follow_runs_eagerly(reads_data, why):
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    t = Trainer(Branching(reads_data), TrainConfig(epochs=1, batch_size=32, capture="on"), progress=False,
                validation="first")
    with pytest.warns(CaptureWarning, match=why):
        t.fit(x)
    assert recorded(t) == 0
    # the same run with capture off gives the same parameters: the eager program ran throughout
    torch.manual_seed(0)
    u = Trainer(Branching(reads_data), TrainConfig(epochs=1, batch_size=32, capture="off"), progress=False,
                validation="first")
    u.fit(x)
    assert all(torch.equal(p, q) for p, q in zip(t.params, u.params))


def test_auto_captures_library_models_only():
    x = data_for("normal")
    vae = build_model(spec(likelihood="normal"), D)
    t = Trainer(vae, TrainConfig(batch_size=16), progress=False)
    t.setup(x[:16], len(x))
    assert why_not_capturable(t, "auto") is None
    assert "off" in why_not_capturable(t, "off")
    t.compile = True
    assert "compile" in why_not_capturable(t, "auto")

    class Wrapped(torch.nn.Module):  # a user class inside a library model
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z)

    vae2 = build_model(spec(likelihood="normal"), D)
    vae2.nets["x"] = Wrapped(vae2.nets["x"])
    t2 = Trainer(vae2, TrainConfig(batch_size=16), progress=False)
    t2.setup(x[:16], len(x))
    assert "Wrapped" in why_not_capturable(t2, "auto") and why_not_capturable(t2, "on") is None
    t3 = Trainer(Branching(), TrainConfig(batch_size=16), progress=False)
    t3.setup(x[:16], len(x))
    assert "built-in" in why_not_capturable(t3, "auto")


def test_hooks_and_replaced_methods_added_after_a_recording_switch_back_to_eager():
    x = data_for("bernoulli")
    vae = build_model(spec(likelihood="bernoulli"), D)
    t = Trainer(vae, TrainConfig(epochs=1, batch_size=16), progress=False)
    t.fit(x)
    assert recorded(t) == 1
    calls = []
    h = vae.nets["x"].mlp[0].weight.register_hook(lambda g: calls.append(1) or g)
    with pyro.validation_enabled(False):
        t.step(x[:16])
        assert calls == [1] and t.engine_name == "eager"  # autograd ran the hook
        h.remove()
        guide = vae.guide
        vae.guide = lambda *a, **k: calls.append(2) or guide(*a, **k)
        t.step(x[:16])
        assert calls == [1, 2] and t.engine_name == "eager"


def test_the_first_step_still_runs_pyros_checks_and_the_policy_names_the_site(tmp_path):
    x = data_for("bernoulli")
    vae = build_model(spec(likelihood="bernoulli"), D)
    t = Trainer(vae, TrainConfig(epochs=1, batch_size=16), run_dir=tmp_path, progress=False)
    t.setup(x[:16], len(x))  # (the set-up's own check would refuse NaN weights before training)
    with torch.no_grad():
        vae.nets["x"].mlp[-1].bias.fill_(float("nan"))  # NaN logits from the first step on
    with pytest.raises(NonFiniteError, match=r"step 1.*model:x \(Bernoulli logits"):
        t.fit(x)


def test_a_nonfinite_replayed_step_is_skipped_without_moving_anything():
    x = data_for("normal")
    vae = build_model(spec(likelihood="normal"), D)
    t = Trainer(vae, TrainConfig(epochs=1, batch_size=16, on_nonfinite="skip"), progress=False)
    t.fit(x)
    before = [p.detach().clone() for p in t.params]
    moments = {k: v.clone() for k, v in t.optimizer.state[t.params[0]].items()}
    bad = x[:16].clone()
    bad[2, 3] = float("inf")
    with pyro.validation_enabled(False):
        out = t.step(bad)
    assert t.engine_name == "captured"
    assert not torch.isfinite(out) and t.state.skipped == 1
    assert all(torch.equal(p, q) for p, q in zip(t.params, before))
    assert all(torch.equal(t.optimizer.state[t.params[0]][k], v) for k, v in moments.items())


def test_capture_is_a_config_key_with_choices():
    from pyro_vae.config import config_from_dict

    assert config_from_dict({"train": {"capture": "off"}}).train.capture == "off"
    with pytest.raises(PyroVAEError, match="train.capture"):
        config_from_dict({"train": {"capture": "sometimes"}})


@pytest.mark.parametrize("found_inf", [None, 0.0, 1.0])
def test_the_direct_fused_adam_call_is_bit_identical_to_optimizer_step(found_inf):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    a, b = make_adam(ps, 1e-2), make_adam(qs, 1e-2)
    for step in range(4):
        grads = [torch.randn_like(p) for p in ps]
        grads[2] = None if step == 1 else grads[2]  # a parameter without a gradient this step
        for p, q, g in zip(ps, qs, grads):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        flag = None if found_inf is None or step == 0 else torch.tensor(found_inf)
        if flag is None:
            a.step()
        else:
            a.found_inf = flag
            a.step()
            del a.found_inf
        used = fused_adam_step(b, flag)
        if not used:  # the first step initializes Adam's state through Optimizer.step
            assert step == 0
            b.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    for p, q in zip(ps, qs):
        assert all(torch.equal(a.state[p][k], b.state[q][k]) for k in a.state[p])


@pytest.mark.parametrize("model_kw", [dict(likelihood="bernoulli"), dict(likelihood="normal", guide="delta")],
                         ids=["bernoulli-meanfield", "normal-delta"])
def test_with_the_private_torch_apis_switched_off_training_takes_the_public_path(model_kw, monkeypatch):
    s = spec(**model_kw)
    x = data_for(s.nodes["x"].likelihood)
    fast = train(s, x, "auto")
    eager = train(s, x, "off")
    monkeypatch.setenv("PYRO_VAE_TORCH_PRIVATE", "0")
    public = train(s, x, "auto")
    assert recorded(fast) == 2 and recorded(public) == 0 and public.engine_name == "eager"
    assert "PYRO_VAE_TORCH_PRIVATE=0" in why_not_capturable(public, "auto")
    # the public NaN check (one norm per tensor) decides the same steps, so training is the eager run's
    assert all(torch.equal(p, q) for p, q in zip(public.params, eager.params))
    assert_same_training(public, fast)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("train_kw", [{}, {"kl_warmup_epochs": 2}, {"elbo": "iwae", "num_particles": 4}],
                         ids=["meanfield", "warmup", "iwae"])
def test_captured_training_equals_eager_training_on_cuda(train_kw):
    s = spec(likelihood="bernoulli")
    x = data_for("bernoulli")
    a = train(s, x, "auto", device="cuda", **train_kw)
    b = train(s, x, "off", device="cuda", **train_kw)
    assert recorded(a) == 2 and a.params[0].device.type == "cuda"
    assert_same_training(a, b)


def test_the_cli_prints_a_capture_warning_as_one_line(tmp_path, monkeypatch):
    import pyro_vae.training.capture as capture_mod
    from pyro_vae.cli import _library_warnings_as_lines, main

    monkeypatch.setattr(capture_mod, "why_not_capturable", lambda trainer, mode: "a reason made up by this test")
    with pytest.warns(CaptureWarning, match="a reason made up by this test: training runs eagerly"):
        rc = main(["train", "--out", str(tmp_path / "out"), "--set", "data.source=synthetic",
                   "--set", "data.num_points=80", "--set", "data.synthetic_dim=5", "--set", "model.likelihood=normal",
                   "--set", "model.latent_dim=2", "--set", "train.batch_size=16", "--set", "train.epochs=1",
                   "--set", "train.capture=on", "--quiet", "--no-plots", "--iw-samples", "4"])
    assert rc == 0
    # what the CLI prints for it (pytest records warnings instead of printing them, so format directly)
    with _library_warnings_as_lines():
        ours = warnings.formatwarning(CaptureWarning("msg"), CaptureWarning, "/x/train.py", 7)
        other = warnings.formatwarning(UserWarning("msg"), UserWarning, "/x/train.py", 7)
    assert ours == "pyro-vae: warning: msg\n"
    assert "train.py:7: UserWarning: msg" in other


def test_on_for_a_model_without_a_support_check_says_why_it_stays_eager_and_first_records_it():
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0))

    class Plain(Branching):  # a fixed program, but no likelihood.check_support to vouch for the data
        def __init__(self):
            super().__init__()
            del self.likelihood

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    from pyro_vae.app import fit

    with pytest.warns(CaptureWarning, match="validation='first'"):
        t = fit(Plain(), x, config=TrainConfig(epochs=1, batch_size=32, capture="on"), progress=False)
    assert recorded(t) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureWarning)
        t = fit(Plain(), x, config=TrainConfig(epochs=1, batch_size=32, capture="on"), progress=False,
                validation="first")
    assert recorded(t) == 1


def test_configs_built_in_python_are_checked_like_toml():
    with pytest.raises(PyroVAEError, match="train.capture"):
        TrainConfig(capture="sometimes")
    with pytest.raises(PyroVAEError, match=r"train.epochs: must be >= 1"):
        TrainConfig(epochs=0)
    assert isinstance(TrainConfig(lr=1).lr, float)
