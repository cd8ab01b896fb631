"""Correctness of the training fast paths (step engines, optimizer, objectives, memory maps).

Speed itself is measured by benchmarks/, not here: these tests check that each
fast path computes what the slow one did, that validation is on where it must
be and restored afterwards, that a skipped non-finite step changes nothing,
and that a memory-mapped file trains without ever being read whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled

from pyro_vae.config import DataConfig, ModelConfig, NetConfig, TrainConfig
from pyro_vae.data.sources import load_data
from pyro_vae.errors import PyroVAEError
from pyro_vae.data.mapped import MappedRows
from pyro_vae.data.checks import all_finite
from pyro_vae.models import build_model
from pyro_vae.infer.objectives import SyncFreeTrace_ELBO, SyncFreeTraceMeanField_ELBO, make_objective, scale_sites
from pyro_vae.training.engines import EagerEngine
from pyro_vae.training.nonfinite import nonfinite_flag
from pyro_vae.training.optim import make_adam, masked_adam_step
from pyro_vae.training.trainer import Trainer

from one_latent import decoder_net

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_vae(likelihood="bernoulli", dim=12, latent=3, seed=0):
    pyro.set_rng_seed(seed)
    spec = ModelConfig(latent_dim=latent, likelihood=likelihood, encoder=NetConfig((16,)), decoder=NetConfig((16,)))
    return build_model(spec, dim)


def bits(n=96, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, dim, generator=g) < 0.3).float()


def state_of(trainer):
    params = [p.detach().clone() for p in trainer.params]
    opt = {k: (v.clone() if torch.is_tensor(v) else v)
           for p in trainer.params for k, v in trainer.optimizer.state.get(p, {}).items()}
    return params, opt


def same_state(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1].keys() == b[1].keys() and all(
        torch.equal(a[1][k], b[1][k]) for k in a[1])


# -- objectives: Pyro's estimators without host syncs ----------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "normal"])
@pytest.mark.parametrize("ours, pyros", [(SyncFreeTrace_ELBO, Trace_ELBO), (SyncFreeTraceMeanField_ELBO, TraceMeanField_ELBO)])
@pytest.mark.parametrize("particles, beta", [(1, 1.0), (3, 0.5)])
@pytest.mark.parametrize("validate", [True, False], ids=["validated", "lean traces"])
def test_sync_free_objectives_equal_pyros(likelihood, ours, pyros, particles, beta, validate):
    model, x = small_vae(likelihood), bits()
    out = []
    for cls in (pyros, ours):
        obj = cls(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
        pyro.set_rng_seed(1)
        model.zero_grad()
        with scale_sites(model.latent_sites, beta), pyro.validation_enabled(validate):
            loss = obj.differentiable_loss(model.model, model.guide, x, data_size=960)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    # Pyro sums the loss in float64 on the host; ours stays a float32 tensor
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-6)
    for g_pyro, g_ours in zip(out[0][1], out[1][1]):
        assert torch.equal(g_pyro, g_ours)


def test_sync_free_trace_elbo_falls_back_to_pyro_for_score_function_sites():
    w = torch.nn.Parameter(torch.tensor(0.3))

    def model(x):
        z = pyro.sample("z", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Bernoulli(torch.sigmoid(w)))

    grads = []
    for obj in (Trace_ELBO(), SyncFreeTrace_ELBO(), SyncFreeTrace_ELBO()):
        pyro.set_rng_seed(3)
        w.grad = None
        with pyro.validation_enabled(len(grads) < 2):  # Pyro's traces, then the lean ones
            loss = obj.differentiable_loss(model, guide, torch.tensor(0.7))
        loss.backward()
        grads.append((float(loss.detach()), w.grad.clone()))
    for other in grads[1:]:
        assert other[0] == pytest.approx(grads[0][0])
        assert torch.equal(other[1], grads[0][1])


@pytest.mark.parametrize("name", ["trace", "meanfield", "iwae"])
def test_objectives_read_nothing_back_from_the_device(name, monkeypatch):
    """No .item()/bool()/float() of a tensor in loss + backward: on CUDA each would be a sync."""
    model, x = small_vae(), bits()
    obj = make_objective(name, 2 if name == "iwae" else 1, 1)
    obj.differentiable_loss(model.model, model.guide, x, data_size=960)  # first call guesses plate nesting

    def refuse(*a, **k):
        raise AssertionError("a tensor was read back to the host")

    with pyro.validation_enabled(False):
        for attr in ("item", "__bool__", "__float__", "tolist"):
            monkeypatch.setattr(torch.Tensor, attr, refuse)
        loss = obj.differentiable_loss(model.model, model.guide, x, data_size=960)
        loss.backward()
        monkeypatch.undo()
    assert torch.isfinite(loss)


# -- the optimizer and the non-finite guard ----------------------------------------------------


def test_trainer_uses_fused_adam_and_keeps_it_after_loading_a_foreach_checkpoint():
    model, x = small_vae(), bits()
    t = Trainer(model, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False)
    t.fit(x)
    assert t.optimizer.param_groups[0]["fused"]
    old = torch.optim.Adam(t.params, lr=1e-3, foreach=True)  # what the previous trainer saved
    old.load_state_dict(t.optimizer.state_dict())
    payload = t.state_dict()
    payload["optimizer"] = old.state_dict()
    payload["optimizer"]["param_groups"][0].update(fused=None, foreach=True)
    t.load_state_dict(payload)
    assert t.optimizer.param_groups[0]["fused"] and not t.optimizer.param_groups[0]["foreach"]


def test_masked_adam_step_equals_a_plain_step_when_finite_and_changes_nothing_when_not():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    a, b = make_adam(ps, 1e-2), make_adam(qs, 1e-2)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ps]
        for p, q, g in zip(ps, qs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        masked_adam_step(b, nonfinite_flag(None, qs))
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    before = [q.detach().clone() for q in qs], {k: v.clone() for k, v in b.state[qs[0]].items()}
    qs[0].grad = torch.full_like(qs[0], float("nan"))
    masked_adam_step(b, nonfinite_flag(None, qs))
    assert all(torch.equal(q, v) for q, v in zip(qs, before[0]))
    assert all(torch.equal(b.state[qs[0]][k], v) for k, v in before[1].items())  # moments and step count


@pytest.mark.parametrize("masked", [False, True], ids=["host-check", "device-masked (the CUDA path)"])
@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_skipped_nonfinite_step_leaves_parameters_and_optimizer_bit_identical(masked, poison):
    model = small_vae()
    t = Trainer(model, TrainConfig(epochs=1, batch_size=32, device="cpu", on_nonfinite="skip"), progress=False)
    t.fit(bits())  # a few real steps: the moments are non-trivial
    # the eager engine as the trainer builds it, with the update mode chosen here (CUDA picks masked)
    engine = EagerEngine(t.loss, t.params, t.optimizer, masked=masked)
    before = state_of(t)
    x = bits(32, seed=5)
    with pyro.validation_enabled(False):  # as in training after the first step
        if poison == "loss":
            x[3, 4] = float("nan")
            out = engine.step(x)
        else:
            h = decoder_net(model)[0].weight.register_hook(lambda g: torch.full_like(g, float("inf")))
            out = engine.step(x)
            h.remove()
    assert not out.finite and out.engine == "eager"
    assert same_state(before, state_of(t))
    good = engine.step(bits(32, seed=6))  # and the next good step trains again
    assert good.finite and torch.isfinite(good.loss)
    assert not same_state(before, state_of(t))


# -- validation: on for the first step, off after it, restored after fit -----------------------------


def _recording(model):
    seen = []
    guide = model.guide

    def recorded(x, data_size=None):
        seen.append(is_validation_enabled())
        return guide(x, data_size=data_size)

    model.guide = recorded
    return seen


@pytest.mark.parametrize("outer", [True, False])
def test_validation_is_on_for_the_first_step_then_off_and_restored(outer):
    model = small_vae()
    t = Trainer(model, TrainConfig(epochs=2, batch_size=32, device="cpu"), progress=False)
    t.setup(bits()[:4], 96)
    seen = _recording(model)
    with pyro.validation_enabled(outer):
        t.fit(bits())
        assert is_validation_enabled() is outer  # restored
    assert len(seen) == 6 and seen[0] is outer and not any(seen[1:])


def test_validation_is_restored_when_fit_raises():
    model = small_vae()
    t = Trainer(model, TrainConfig(epochs=3, batch_size=32, device="cpu"), progress=False)
    t.setup(bits()[:4], 96)
    seen = _recording(model)
    guide = model.guide

    def failing(x, data_size=None):
        if len(seen) == 4:
            raise RuntimeError("boom")
        return guide(x, data_size=data_size)

    model.guide = failing
    with pyro.validation_enabled(True):
        with pytest.raises(RuntimeError, match="boom"):
            t.fit(bits())
        assert is_validation_enabled()


def test_validation_always_and_models_without_a_support_check_keep_it_on():
    model = small_vae()
    t = Trainer(model, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False, validation="always")
    t.setup(bits()[:4], 96)
    seen = _recording(model)
    with pyro.validation_enabled(True):
        t.fit(bits())
    assert seen == [True] * 3

    class Custom(torch.nn.Module):  # the protocol, without a likelihood: nothing checked the data up front
        latent_sites, obs_site = ("z",), "x"

        def __init__(self):
            super().__init__()
            self.inner = small_vae()
            self.seen = []

        def model(self, x):
            self.inner.model(x)

        def guide(self, x):
            self.seen.append(is_validation_enabled())
            self.inner.guide(x)

    c = Custom()
    t = Trainer(c, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False)
    with pyro.validation_enabled(True):
        t.setup(bits()[:4], 96)
        c.seen.clear()
        t.fit(bits())
    assert len(c.seen) == 3 and all(c.seen)


def test_data_outside_the_support_fails_before_training_when_validation_will_be_off():
    x = bits()
    x[40, 2] = 0.5
    t = Trainer(small_vae(), TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False)
    with pytest.raises(PyroVAEError, match="needs 0/1 data"):
        t.fit(x)
    assert t.state.step == 0


def test_all_finite():
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(50, 4)
        x[17, 2] = bad
        assert not all_finite(x)
    assert all_finite(torch.ones(3, 3))


# -- memory-mapped training data -----------------------------------------------------------------


def _write(tmp_path, x, name="train.npy"):
    path = tmp_path / name
    np.save(path, x.numpy() if torch.is_tensor(x) else x)
    return str(path)


def test_a_file_over_the_limit_trains_through_the_map_exactly_as_in_memory(tmp_path, monkeypatch):
    x = bits(300, 12, seed=2)
    path = _write(tmp_path, x)
    cfg = DataConfig(train=path, source="arrays", test_fraction=0.1, binarize="none")
    in_memory = load_data(cfg, "bernoulli")
    monkeypatch.setenv("PYRO_VAE_MEMMAP_BYTES", "1000")  # the file is 14 kB
    mapped = load_data(cfg, "bernoulli")
    assert isinstance(mapped.train, MappedRows) and not isinstance(in_memory.train, MappedRows)
    assert torch.equal(mapped.test, in_memory.test)  # the same held-out rows
    assert torch.equal(mapped.train[torch.arange(len(mapped.train))], in_memory.train)
    assert any("memory-map limit" in n for n in mapped.notes)
    results = []
    for data in (in_memory, mapped):
        model = small_vae()
        t = Trainer(model, TrainConfig(epochs=2, batch_size=64, device="cpu", seed=3), progress=False)
        t.fit(data.train, data.test)
        results.append(([p.detach().clone() for p in model.parameters()], t.state.history))
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    assert [h["test_elbo"] for h in results[0][1]] == [h["test_elbo"] for h in results[1][1]]


def test_mapped_data_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_MEMMAP_BYTES", "100")
    x = np.zeros((50, 6), np.float32)
    x[30, 1] = np.nan
    with pytest.raises(PyroVAEError, match="NaN/Inf values in 1 rows .first at row 30, column 1"):
        load_data(DataConfig(train=_write(tmp_path, x), source="arrays", binarize="none"), "bernoulli")
    dropped = load_data(DataConfig(train=_write(tmp_path, x), source="arrays", binarize="none",
                                   drop_nonfinite=True, test_fraction=0.0), "bernoulli")
    assert isinstance(dropped.train, MappedRows) and len(dropped.train) == 49
    y = np.full((50, 6), 0.5, np.float32)
    with pytest.raises(PyroVAEError, match="binarize = 'static'"):
        load_data(DataConfig(train=_write(tmp_path, y), source="arrays", binarize="static"), "bernoulli")
    ds = load_data(DataConfig(train=_write(tmp_path, y), source="arrays", binarize="dynamic"), "bernoulli")
    t = Trainer(small_vae(dim=6), TrainConfig(epochs=1, batch_size=16, device="cpu"), progress=False)
    t.fit(ds.train, binarize="dynamic")  # batches are binarized as they are read
    assert t.state.epoch == 1
    with pytest.raises(PyroVAEError, match="needs 0/1 data"):
        Trainer(small_vae(dim=6), TrainConfig(epochs=1, batch_size=16, device="cpu"), progress=False).fit(ds.train)


@pytest.mark.slow
def test_a_memory_mapped_file_is_never_read_whole(tmp_path):
    """In a process that may not allocate the file's size, loading and training through the map still work."""
    script = textwrap.dedent(f"""
        import resource, numpy as np, torch, pyro, pyro_vae.data.mapped as mapped
        from pyro_vae.config import DataConfig, ModelConfig, NetConfig, TrainConfig
        from pyro_vae.data.sources import load_data
        from pyro_vae.models import build_model
        from pyro_vae.training.trainer import Trainer
        torch.set_num_threads(1)
        mapped.CHUNK_BYTES = 1 << 20   # passes over the file read 1 MiB at a time
        path = {str(tmp_path / "big.npy")!r}
        rows, dim = 20000, 1000        # 80 MB of float32
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))[:] = (
            np.arange(dim) % 2).astype(np.float32)
        p = torch.nn.Parameter(torch.zeros(1)); p.grad = torch.zeros(1)
        torch.optim.Adam([p], fused=True).step()  # its imports happen before the limit
        # so does step capture's first recording (its threads and code; torch's CUDA build maps more for them),
        # on a small model and in-memory rows that share nothing with the file
        Trainer(build_model(ModelConfig(latent_dim=2, encoder=NetConfig((8,)), decoder=NetConfig((8,))), 16),
                TrainConfig(epochs=1, batch_size=8, device="cpu"), progress=False).fit(torch.rand(16, 16).round())
        def vmdata():
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))
        resource.setrlimit(resource.RLIMIT_DATA, (vmdata() + (40 << 20), resource.RLIM_INFINITY))
        ds = load_data(DataConfig(train=path, source="arrays", test_fraction=0.01, binarize="none"), "bernoulli")
        assert isinstance(ds.train, mapped.MappedRows), type(ds.train)
        pyro.set_rng_seed(0)
        model = build_model(ModelConfig(latent_dim=2, encoder=NetConfig((8,)), decoder=NetConfig((8,))), dim)
        t = Trainer(model, TrainConfig(epochs=1, batch_size=250, device="cpu"), progress=False)
        t.fit(ds.train)
        assert t.state.epoch == 1
        try:
            np.array(ds.train.array)   # the control: reading it whole does not fit under the limit
        except MemoryError:
            print("OK")
    """)
    env = dict(os.environ, PYRO_VAE_MEMMAP_BYTES=str(1 << 20))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr[-2000:]


# -- opt-in paths ------------------------------------------------------------------------------------


def test_compile_networks_keeps_state_dict_keys_and_trains_as_eager():
    model = small_vae()
    keys = list(model.state_dict())
    t = Trainer(model, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False, compile="eager")
    t.fit(bits())
    assert list(model.state_dict()) == keys and t.engine_name == "eager"
    plain = Trainer(small_vae(), TrainConfig(epochs=1, batch_size=32, device="cpu", capture="off"), progress=False)
    plain.fit(bits())
    # the 'eager' backend runs the networks' own ops: the same training, to float32 rounding
    assert all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(t.params, plain.params))


def test_cuda_graph_needs_a_cuda_device():
    with pytest.raises(PyroVAEError, match="cuda_graph=True needs"):
        Trainer(small_vae(), TrainConfig(device="cpu"), cuda_graph=True)


def test_bad_validation_mode_is_rejected():
    with pytest.raises(PyroVAEError, match="validation"):
        Trainer(small_vae(), TrainConfig(device="cpu"), validation="sometimes")


@needs_cuda
def test_cuda_step_reads_back_once_and_skips_on_device():
    model = small_vae()
    t = Trainer(model, TrainConfig(epochs=1, batch_size=32, device="cuda", on_nonfinite="skip"), progress=False)
    t.fit(bits())
    x = bits(32, seed=4).cuda()
    with pyro.validation_enabled(False):
        loss = t.loss(x)
        torch.cuda.set_sync_debug_mode("error")
        try:  # loss, backward, flag and the masked update: no synchronization
            loss.backward()
            masked_adam_step(t.optimizer, nonfinite_flag(loss, t.params))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        before = state_of(t)
        x[0, 0] = float("nan")
        assert torch.isnan(t.step(x))
        assert same_state(before, state_of(t))


@needs_cuda
@pytest.mark.parametrize("policy", ["skip", "rollback"])
def test_cuda_graph_training(policy):
    x = bits(512, 12, seed=1).cuda()
    model = small_vae().cuda()
    t = Trainer(model, TrainConfig(epochs=3, batch_size=64, device="cuda", on_nonfinite=policy), progress=False,
                cuda_graph=True)
    t.fit(x)
    assert t.engine_name == "cuda_graph"
    losses = [h["train_loss"] for h in t.state.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # a non-finite batch replayed through the graph: the update is skipped on the device
    before = state_of(t)
    bad = x[:64].clone()
    bad[0, 0] = float("nan")
    with pyro.validation_enabled(False):
        assert torch.isnan(t.step(bad)) and t.engine_name == "cuda_graph"
    if policy == "skip":
        assert same_state(before, state_of(t))
    # loading a state loads fresh optimizer tensors: the graph notices and is recorded again
    t.load_state_dict(t.state_dict())
    after = state_of(t)
    with pyro.validation_enabled(False):
        assert torch.isfinite(t.step(x[:64])) and t.engine_name == "cuda_graph"
    assert not same_state(after, state_of(t))
