"""Step capture: one SVI step's loss and gradients, recorded once as tensor ops and replayed.

Why.  At batch 32-128 on a CPU a Pyro step costs about 0.8 ms more than the
same arithmetic written by hand.  The arithmetic is identical (the networks,
the sample-site densities, the analytic KL); the extra time is Python:
the messenger stack, the trace bookkeeping, distribution objects, and the
autograd engine walking the graph.  For a model whose structure does not
change between steps (the same sites, the same shapes, no Python decisions
made from tensor values) all of that produces the same sequence of tensor
operations on every batch.

What.  The first time a batch of a given shape arrives, the trainer's loss
(Pyro model, guide and objective, unchanged) and ``torch.autograd.grad`` of it
run once under ``make_fx``, which records the ATen operations they execute,
the backward pass included, in one straight-line FX graph whose inputs are
the parameters, buffers and the batch.  Later batches of that shape replay the
graph: the same operations, the same random-number draws from the same
generator, with no Pyro machinery and no autograd engine around them.  This is
what Pyro's ``JitTrace_ELBO`` does with ``torch.jit.trace`` for the forward
pass; recording the backward too is what makes the replay cheaper than a
hand-written eager loop.

Guards.  A recording is only as good as the assumption that the program does
not depend on tensor values through Python.  So a capture is
(1) keyed by everything the program may branch on that the trainer knows: the
batch's shape, dtype and device, beta, the model's training flag, the data
size; (2) made only with Pyro validation off (validation reads tensor values);
(3) checked once when made: the replay and an eager step on a *different*
batch (the rows rotated) must give the same loss and gradients from the same
random state, else the trainer warns once and stays eager for that key.
Parameters that live in Pyro's param store (``pyro.param``) rather than in the
model's modules would be recorded as constants, so such models are never
captured.  ``train.capture = "auto"`` captures the built-in models, whose code
is known to satisfy all this; ``"on"`` also captures user models (after the
check); ``"off"`` never captures.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import pyro
import torch
from pyro.infer.util import is_validation_enabled
import torch.nn as nn
from torch.fx.experimental.proxy_tensor import make_fx

from ..infer.rng import forked_rng
from .perf import nonfinite_in
from ..errors import CaptureWarning


class _LossOf(nn.Module):
    """A module whose forward is the trainer's loss, so ``functional_call`` can swap in graph inputs."""

    def __init__(self, trainer):
        super().__init__()
        self.net = trainer.model
        # a plain attribute, not a submodule: the trainer holds no tensors of its own
        object.__setattr__(self, "_trainer", trainer)

    def forward(self, x, beta):
        return self._trainer._loss(x, beta)


class CapturedStep:
    """The recorded loss-and-gradients of one key; ``__call__(x)`` -> (loss, bad, grads)."""

    def __init__(self, trainer, x: torch.Tensor, beta: float):
        self.trainer = trainer
        self.wrapper = _LossOf(trainer)
        # beta (the KL weight, which warm-up changes every step) is an input, not a constant
        self.beta_input = beta != 1.0
        self.param_names = ["net." + n for n in trainer.param_names]
        # buffers (e.g. the prior's loc and scale) are graph inputs too, read through their owners
        # at every call, so a recording never holds a stale copy
        owners = dict(trainer.model.named_modules())
        self.buffer_slots, self.buffer_names = [], []
        for name, _ in trainer.model.named_buffers():
            owner, _, attr = name.rpartition(".")
            self.buffer_slots.append((owners[owner], attr))
            self.buffer_names.append("net." + name)
        n_params = len(trainer.params)
        self.present: List[bool] = []  # which parameters get a gradient (unused ones get None)
        inputs = [p.detach().requires_grad_(True) for p in trainer.params]
        # recording runs the step (and TorchScript's tracer runs it again): their random
        # draws must not be the run's, and validation, which reads values, is off
        with forked_rng(x.device), pyro.validation_enabled(False):
            graph = make_fx(self._flat_joint(n_params), tracing_mode="real")(*inputs, *self._inputs(x, beta))
            graph = simplify(graph)
            # The FX graph replays each op through Python; TorchScript's interpreter runs the
            # same ops without it (0.3 ms of a 1.6 ms step at batch 32 on one core).  Its plain
            # interpreter (no profiling executor) runs the same plan on every call, so a
            # replay is bit-identical however many calls came before (exact resume).
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.run = torch.jit.trace(graph, (*trainer.params, *self._inputs(x, beta)), check_trace=False)
            except Exception:  # a graph TorchScript cannot hold: the FX replay is the same computation
                self.run = graph

    def _inputs(self, x, beta) -> List[torch.Tensor]:
        """The graph's inputs after the parameters: buffers, the batch, and beta where it varies."""
        out = [owner._buffers[attr] for owner, attr in self.buffer_slots]
        out.append(x)
        if self.beta_input:
            out.append(torch.tensor(float(beta), device=x.device))
        return out

    def _flat_joint(self, n_params: int):
        n_buffers = len(self.buffer_slots)

        def joint(*flat):
            params, buffers = flat[:n_params], flat[n_params:n_params + n_buffers]
            x = flat[n_params + n_buffers]
            beta = flat[-1] if self.beta_input else 1.0
            return self._joint(params, buffers, x, beta)

        return joint

    def _joint(self, params, buffers, x, beta):
        tensors = dict(zip(self.param_names, params))
        tensors.update(zip(self.buffer_names, buffers))
        loss = torch.func.functional_call(self.wrapper, tensors, (x, beta))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        self.present = [g is not None for g in grads]
        present = [g for g in grads if g is not None]
        bad = nonfinite_in(loss, present)  # the trainer's non-finite check, recorded with the step
        return (loss.detach(), bad, *present)

    def __call__(self, x: torch.Tensor, beta: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, List[Optional[torch.Tensor]]]:
        """(loss, bad, one gradient or None per parameter) for batch ``x``."""
        with torch.no_grad(), torch.jit.optimized_execution(False):
            out = self.run(*self.trainer.params, *self._inputs(x, beta))
        present = iter(out[2:])
        return out[0], out[1], [next(present) if has else None for has in self.present]


def _eager_loss_and_grads(trainer, x, beta):
    loss = trainer._loss(x, beta)
    grads = torch.autograd.grad(loss, trainer.params, allow_unused=True)
    return loss.detach(), grads


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    # float32 sums may associate differently in the two schedules; structure changes are far larger
    scale = float(a.abs().nan_to_num(0.0, 0.0, 0.0).max()) if a.numel() else 0.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6 * (1 + scale), equal_nan=True))


def verify(trainer, captured: CapturedStep, x: torch.Tensor, beta: float) -> Optional[str]:
    """Replay vs an eager step on the rows rotated, from one random state; None when they agree."""
    probe = x.roll(1, dims=0) if x.shape[0] > 1 else x
    with forked_rng(x.device), pyro.validation_enabled(False):
        with forked_rng(x.device):  # the replay below starts from the state the eager step saw
            eager_loss, eager_grads = _eager_loss_and_grads(trainer, probe, beta)
        loss, _, grads = captured(probe, beta)
    if not _same(eager_loss, loss):
        return f"the recorded loss {float(loss):.6g} differs from Pyro's {float(eager_loss):.6g}"
    for name, a, b in zip(trainer.param_names, eager_grads, grads):
        if not _same(a, b):
            return f"the recorded gradient of {name!r} differs from autograd's"
    return None


def capturable(trainer, mode: str) -> Optional[str]:
    """Why this trainer's model cannot be captured under ``mode`` (None: it can)."""
    from ..models import MODELS  # a registered (built-in) model type

    model = trainer.model
    if mode == "off":
        return "train.capture = 'off'"
    if not isinstance(model, nn.Module):
        return "the model is not a torch.nn.Module"
    if any(n.startswith("param_store:") for n in trainer.param_names):
        return "the model keeps parameters in Pyro's param store (pyro.param), which a recording would freeze"
    if trainer.compile:
        return "compile=True compiles the networks instead"
    if mode == "auto":
        if type(model) not in {MODELS[n] for n in MODELS}:
            return "train.capture = 'auto' captures the built-in models only (set 'on' to capture this one)"
        foreign = [type(m).__name__ for m in model.modules() if not type(m).__module__.startswith(_LIBRARY)]
        if foreign:
            return (f"the model holds a module of a user class ({foreign[0]}), whose Python a recording "
                    "would not re-run (set 'on' to capture it anyway)")
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()):
        return "the model has module hooks, which a recording would not re-run"
    return None


# classes whose forward is a fixed sequence of tensor operations
_LIBRARY = ("pyro_vae.", "torch.nn.", "pyro.nn.")


class Captures:
    """The trainer's captured steps, one per key; a key that failed its check stays eager."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.steps: Dict[tuple, Optional[CapturedStep]] = {}
        self.reason: Optional[str] = None  # why nothing is captured, once known
        self._said_validation = False

    @property
    def mode(self) -> str:
        return self.trainer.config.capture

    def key(self, x, beta):
        t = self.trainer
        return (tuple(x.shape), x.dtype, x.device, beta == 1.0, bool(t.model.training), t.data_size)

    def usable(self) -> bool:
        """Whether this step may be replayed at all (cheap; the trainer asks before :meth:`get`)."""
        if self.reason is not None or not torch.is_grad_enabled() or self._patched():
            return False
        if is_validation_enabled() and self.trainer._unvalidated is None:
            # validation that stays on for every step needs the eager program
            if self.mode == "on" and not self._said_validation:
                self._said_validation = True
                warnings.warn(
                    "train.capture = 'on', but Pyro validation stays on for every step (the model has no "
                    "likelihood.check_support to check the data once, up front), and validation needs the "
                    "eager program: pass validation='first' to Trainer or fit to vouch for the data",
                    CaptureWarning, stacklevel=4)
            return False
        return True

    def get(self, x: torch.Tensor, beta: float) -> Optional[CapturedStep]:
        """The captured step for this batch, recording it on first sight; None: run eagerly.

        Call only when :meth:`usable` says a replay is allowed for this step.
        """
        key = self.key(x, beta)
        if key in self.steps:
            return self.steps[key]
        t = self.trainer
        self.reason = capturable(t, self.mode)
        if self.reason is not None:
            if self.mode == "on":
                warnings.warn(f"train.capture = 'on', but {self.reason}: training runs eagerly", CaptureWarning,
                              stacklevel=3)
            return None
        try:
            step = CapturedStep(t, x, beta)
            problem = verify(t, step, x, beta)
        except Exception as e:  # anything the recorder cannot follow: eager is always correct
            step, problem = None, f"it could not be recorded ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        if problem is not None:
            warnings.warn(f"step capture is off for {type(t.model).__name__} (batch {tuple(x.shape)}): {problem}; "
                          "training runs eagerly (set train.capture = 'off' to silence this)", CaptureWarning,
                          stacklevel=3)
            step = None
        self.steps[key] = step
        return step

    def _patched(self) -> bool:
        """Python added after the fact that a replay would skip: a replaced model/guide, a gradient hook.

        Checked on every step (a few microseconds): such changes can come after a recording exists.
        """
        model = self.trainer.model
        inst = getattr(model, "__dict__", {})
        if "model" in inst or "guide" in inst:
            return True
        return any(p._backward_hooks for p in self.trainer.params)


_aten = torch.ops.aten
# ops that return their first argument unchanged (as a value) in a no-grad replay
_PASS_THROUGH = {_aten.detach.default, _aten.lift_fresh_copy.default}


def _shape(node):
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _identity_input(node):
    """The node this one merely copies or re-views (same shape, same values), or None."""
    t, args = node.target, node.args
    if t in _PASS_THROUGH:
        return args[0]
    if t in (_aten.expand.default, _aten.view.default, _aten.reshape.default) and _shape(args[0]) == _shape(node):
        return args[0]
    if t in (_aten.mul.Tensor, _aten.div.Tensor, _aten.mul.Scalar, _aten.div.Scalar) and len(args) == 2 \
            and not isinstance(args[1], torch.fx.Node) and args[1] == 1 and _shape(args[0]) == _shape(node):
        return args[0]
    if t is _aten.pow.Tensor_Scalar and args[1] == 1:
        return args[0]
    if t is _aten.t.default and isinstance(args[0], torch.fx.Node) and args[0].target is _aten.t.default:
        return args[0].args[0]
    return None


def simplify(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop the recording's no-op nodes (copies, same-shape views, x*1, t(t(x))) and dead code.

    Only safe because no node of a value we forward is later written in place:
    the recording's in-place ops all fill fresh ``empty`` tensors (random draws),
    which this checks, leaving the graph as recorded otherwise.
    """
    graph = gm.graph
    for node in graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
                and node.target._schema.is_mutable:
            first = node.args[0] if node.args else None
            fresh = isinstance(first, torch.fx.Node) and first.target in (
                _aten.empty.memory_format, _aten.empty_like.default, _aten.empty_strided.default)
            if not fresh:
                graph.eliminate_dead_code()
                gm.recompile()
                return gm
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            source = _identity_input(node)
            if source is not None:
                node.replace_all_uses_with(source)
                graph.erase_node(node)
                changed = True
    graph.eliminate_dead_code()
    _reuse_dead_inputs(graph)
    for node in graph.nodes:  # recorded values would keep a step's tensors alive
        node.meta.pop("val", None)
        node.meta.pop("tensor_meta", None)
    gm.recompile()
    return gm


# elementwise ops whose in-place form writes into the first argument
_IN_PLACE = {
    _aten.add.Tensor: _aten.add_.Tensor, _aten.sub.Tensor: _aten.sub_.Tensor,
    _aten.mul.Tensor: _aten.mul_.Tensor, _aten.div.Tensor: _aten.div_.Tensor,
    _aten.neg.default: _aten.neg_.default, _aten.sigmoid.default: _aten.sigmoid_.default,
    _aten.exp.default: _aten.exp_.default, _aten.log.default: _aten.log_.default,
}
# ops that return a new tensor, never a view of an argument (an in-place op
# applied by the pass below returns its first argument, itself fresh with no other user)
_FRESH = set(_IN_PLACE) | set(_IN_PLACE.values()) | {
    _aten.mm.default, _aten.addmm.default, _aten.sigmoid.default, _aten.softplus.default,
    _aten.softplus_backward.default, _aten.threshold_backward.default, _aten.relu.default,
    _aten.binary_cross_entropy_with_logits.default, _aten.pow.Tensor_Scalar, _aten.rsub.Scalar,
    _aten.ones_like.default, _aten.cat.default,
}


def _reuse_dead_inputs(graph: torch.fx.Graph) -> None:
    """``y = f(a, ...)`` -> ``a.f_(...)`` when ``a`` is a fresh intermediate that nothing reads later.

    A [B, D] elementwise result then overwrites a buffer that is still in cache
    instead of a newly allocated one, as autograd's own backward formulas do
    (at batch 1024 each such pass over a 784-wide batch costs about 0.3 ms).
    ``a`` must have this node as its only user (so no view of it exists and no
    later node reads it), be produced by an op that returns a new tensor, and
    have the result's shape and dtype (no broadcasting into it).
    """
    for node in graph.nodes:
        inplace = _IN_PLACE.get(node.target) if node.op == "call_function" else None
        first = node.args[0] if node.args else None
        if inplace is None or not isinstance(first, torch.fx.Node) or first.op != "call_function":
            continue
        if first.target not in _FRESH or len(first.users) != 1:
            continue
        a, out = first.meta.get("val"), node.meta.get("val")
        if not (isinstance(a, torch.Tensor) and isinstance(out, torch.Tensor)):
            continue
        if a.shape != out.shape or a.dtype != out.dtype or not a.is_contiguous():
            continue
        node.target = inplace
