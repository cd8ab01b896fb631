"""The recorded step's exact rewrites (pyro_vae/training/graph_passes.py): what they merge and hoist, what they
leave alone (random draws, tensors written in place), and that the rewritten graph computes the recorded values
bit for bit; on a ZINB model, the per-row lgamma/digamma of the dispersion is gone and the step still agrees."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import pyro_vae as pv
from pyro_vae.training import _torch_private, capture
from pyro_vae.training._torch_private import enabled, record, simplify
from pyro_vae.training.graph_passes import HOISTED

aten = torch.ops.aten
pytestmark = pytest.mark.skipif(not enabled(), reason="step capture's private torch APIs are off")


def recorded(fn, *inputs):
    return simplify(make_fx(fn, tracing_mode="real")(*inputs))


def calls(gm, op):
    """The nodes of ``gm`` calling ``op``."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == op]


def test_repeated_calls_are_merged_and_random_draws_are_not():
    def f(x, y):
        a = (x + y).exp()
        b = (x + y).exp()  # the same two calls again: merged
        return a * b + torch.randn_like(x) + torch.randn_like(x)  # two draws: two draws

    x, y = torch.randn(4, 3), torch.randn(4, 3)
    gm = recorded(f, x, y)
    assert len(calls(gm, aten.add.Tensor)) + len(calls(gm, aten.add_.Tensor)) == 3  # x + y once, then two sums
    assert len(calls(gm, aten.exp.default)) + len(calls(gm, aten.exp_.default)) == 1
    draws = [n for n in gm.graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
             and torch.Tag.nondeterministic_seeded in n.target.tags]
    assert len(draws) == 2
    torch.manual_seed(3)
    want = f(x, y)
    torch.manual_seed(3)
    assert torch.equal(gm(x, y), want)


def test_a_tensor_written_in_place_is_not_merged_with_its_twin():
    def f(x):
        a = x > 0
        b = x > 0
        a.logical_and_(x < 1)  # a changes after b was made: b must stay what it was
        return a.float() * 2 + b.float()

    x = torch.linspace(-2, 2, 17)
    gm = recorded(f, x)
    assert len(calls(gm, aten.gt.Scalar)) == 2
    assert torch.equal(gm(x), f(x))


@pytest.mark.parametrize("op", [torch.lgamma, torch.digamma])
def test_a_costly_function_of_a_broadcast_is_computed_once_per_value_and_gives_the_same_bits(op):
    def f(theta, x):
        return op(theta.exp().expand(x.shape)) * x

    theta, x = torch.randn(50) * 3, torch.rand(64, 50)
    gm = recorded(f, theta, x)
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in HOISTED]
    assert node.args[0].target is aten.exp.default  # of the (50,) tensor, not of its (64, 50) broadcast
    assert torch.equal(gm(theta, x), f(theta, x))


def test_a_broadcast_of_the_last_dimension_is_left_as_recorded():
    def f(s, x):
        return torch.lgamma(s.expand(x.shape)) * x

    s, x = torch.rand(64, 1) + 0.5, torch.rand(64, 50)
    gm = recorded(f, s, x)
    (node,) = calls(gm, aten.lgamma.default)
    assert node.args[0].target is aten.expand.default
    assert torch.equal(gm(s, x), f(s, x))


@pytest.mark.parametrize("likelihood", ["zinb", pytest.param("negative_binomial", marks=pytest.mark.slow)])
def test_a_negative_binomial_step_scores_the_dispersion_once_per_feature_and_agrees_with_pyro(likelihood, monkeypatch):
    graphs = []

    def keep(fn, inputs):
        graphs.append(record(fn, inputs))
        return graphs[-1]

    monkeypatch.setattr(_torch_private, "record", keep)
    torch.manual_seed(0)
    rows, genes = 32, 40
    x = torch.distributions.Poisson(torch.rand(rows, genes) * 5).sample()
    model = pv.GraphModel(pv.ModelConfig(latent_dim=2, likelihood=likelihood, library="observed",
                                         encoder={"hidden": [8]}, decoder={"hidden": [8]}), data_dim=genes)
    trainer = pv.Trainer(model, pv.TrainConfig(epochs=1, batch_size=16, seed=0), progress=False)
    trainer.fit(x)
    assert trainer.captured_shapes == [(16, genes)] and len(graphs) == 1
    gm = graphs[0]
    # lgamma(theta + x) and lgamma(x + 1) per count, lgamma(theta) per feature, then broadcast; digamma likewise
    lgammas, digammas = calls(gm, aten.lgamma.default), calls(gm, aten.digamma.default)
    assert (len(lgammas), len(digammas)) == (3, 2)
    for nodes in (lgammas, digammas):
        assert not any(n.args[0].target is aten.expand.default for n in nodes)
        assert sum(all(u.target is aten.expand.default for u in n.users) for n in nodes) == 1
    (step,) = [s for s in trainer._captures.steps.values() if s is not None]
    problem = capture.verify(trainer, step, {"x": x[16:]}, 1.0)  # replay vs Pyro's eager step on other rows
    assert problem is None, problem


def test_adding_a_negation_becomes_a_subtraction_with_the_same_bits():
    def f(a, b, c):
        return (a + (-b)) * ((-c) + a) + (-(-a))

    a, b, c = torch.randn(64, 50) * 30, torch.randn(64, 50), torch.randn(50) * 1e-3
    a[0, :3] = torch.tensor([0.0, -0.0, 1.0])
    b[0, :3] = torch.tensor([0.0, 0.0, 1.0])
    gm = recorded(f, a, b, c)
    assert not calls(gm, aten.neg.default) and not calls(gm, aten.neg_.default)
    assert len(calls(gm, aten.sub.Tensor)) + len(calls(gm, aten.sub_.Tensor)) == 2
    out, want = gm(a, b, c), f(a, b, c)
    assert torch.equal(out, want) and torch.equal(out.signbit(), want.signbit())


def test_a_node_written_in_place_is_not_replaced_by_its_input():
    def f(x):
        y = -(-x)
        y.mul_(2)  # were y replaced by x, this would write into the caller's tensor
        return y + torch.lgamma(x.expand(3, 5)).mul_(1)

    x = torch.rand(5) + 0.5
    before = x.clone()
    gm = recorded(f, x)
    assert torch.equal(gm(x), f(before.clone())) and torch.equal(x, before)
