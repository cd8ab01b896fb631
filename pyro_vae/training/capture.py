"""Step capture: one SVI step's loss and gradients, recorded once as tensor ops and replayed.

Why.  On a CPU at small batches much of a Pyro step is Python (messengers,
traces, distribution objects, the autograd engine), not arithmetic.  For a
model whose structure does not change between steps that Python produces the
same tensor operations on every batch.

What.  The first batch of a shape runs the trainer's loss (Pyro model, guide
and objective, unchanged) and ``torch.autograd.grad`` of it once under a
recorder (``_torch_private.record``), which keeps the ATen operations, the
backward included, as one straight-line graph whose inputs are the parameters,
buffers and the batch.  Later batches of that shape replay it: the same
operations and random draws, without Pyro or autograd around them (Pyro's
``JitTrace_ELBO`` does this for the forward pass only).

Guards.  A recording is only as good as the assumption that the program does
not depend on tensor values through Python.  So a capture is
(1) keyed by everything the program may branch on that the trainer knows: the
batch's shape, dtype and device (each array's and its name, for named data), beta, the model's training flag, the data
size; (2) made only with Pyro validation off (validation reads tensor values);
(3) checked once when made: the replay and an eager step on a *different*
batch (the rows rotated) must give the same loss and gradients from the same
random state, else the trainer warns once and stays eager for that key.
Parameters that live in Pyro's param store (``pyro.param``) rather than in the
model's modules would be recorded as constants, so such models are never
captured.  ``train.capture = "auto"`` captures the built-in models, whose code
is known to satisfy all this (a chain over time only in a run of
:data:`CHAIN_CAPTURE_MIN_STEPS` steps or more, as its recording is long; a
shorter run says so once); ``"on"`` also captures user models (after the
check); ``"off"`` never captures.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import pyro
import torch
import torch.nn as nn

from . import _torch_private
from ..data import batch
from ..infer.data_name import named_data
from ..infer.rng import forked_rng
from .nonfinite import nonfinite_in
from ..errors import CaptureWarning
from ..models.graph.compile import GraphModel
from ..models.graph.sequence import SequenceModel

#: how far a replay may differ from Pyro's eager step (float32 sums may associate differently in the two
#: schedules; structure changes are far larger): the check when recording and the tests use this one rule
RTOL = 1e-5
ATOL = 1e-6


class _LossOf(nn.Module):
    """A module whose forward is the trainer's loss, so ``functional_call`` can swap in graph inputs."""

    def __init__(self, trainer):
        super().__init__()
        self.net = trainer.model
        # a plain attribute, not a submodule: the trainer holds no tensors of its own
        object.__setattr__(self, "_trainer", trainer)

    def forward(self, x, beta):
        return self._trainer.loss(x, beta)


class CapturedStep:
    """The recorded loss-and-gradients of one key; ``__call__(x)`` -> (loss, bad, grads)."""

    def __init__(self, trainer, x, beta: float):
        self.trainer = trainer
        # named data (a CVAE's x and y) enter as one graph input per array, in the batch's own order
        self.names = list(x)
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
        device = batch.reference(x).device
        with forked_rng(device), pyro.validation_enabled(False):
            graph = _torch_private.record(self._flat_joint(n_params), [*inputs, *self._inputs(x, beta)])
            # the FX graph replays each op through Python; TorchScript's interpreter does not
            self.run = _torch_private.script(graph, [*trainer.params, *self._inputs(x, beta)])

    def _inputs(self, x, beta) -> List[torch.Tensor]:
        """The graph's inputs after the parameters: buffers, the batch, and beta where it varies."""
        out = [owner._buffers[attr] for owner, attr in self.buffer_slots]
        out += batch.tensors(x)
        if self.beta_input:
            out.append(torch.tensor(float(beta), device=batch.reference(x).device))
        return out

    def _flat_joint(self, n_params: int):
        n_buffers = len(self.buffer_slots)

        n_data = len(self.names)

        def joint(*flat):
            params, buffers = flat[:n_params], flat[n_params:n_params + n_buffers]
            arrays = flat[n_params + n_buffers:n_params + n_buffers + n_data]
            x = dict(zip(self.names, arrays))
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
        """(loss, bad, one gradient or None per parameter) for batch ``x`` (named arrays, or the one tensor)."""
        x = named_data(self.trainer.model, x)
        out = _torch_private.replay(self.run, [*self.trainer.params, *self._inputs(x, beta)])
        present = iter(out[2:])
        return out[0], out[1], [next(present) if has else None for has in self.present]


def _eager_loss_and_grads(trainer, x, beta):
    loss = trainer.loss(x, beta)
    grads = torch.autograd.grad(loss, trainer.params, allow_unused=True)
    return loss.detach(), grads


def agree(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    """Whether a replayed value matches the eager one within :data:`RTOL` (``atol`` scaled to ``a``'s size)."""
    if a is None or b is None:
        return a is None and b is None
    a, b = a.detach(), b.detach()
    scale = float(a.abs().nan_to_num(0.0, 0.0, 0.0).max()) if a.numel() else 0.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=RTOL, atol=ATOL * (1 + scale), equal_nan=True))


def verify(trainer, captured: CapturedStep, x, beta: float) -> Optional[str]:
    """Replay vs an eager step on the rows rotated, from one random state; None when they agree."""
    probe = batch.apply(x, lambda t: t.roll(1, dims=0)) if batch.num_rows(x) > 1 else x
    device = batch.reference(x).device
    with forked_rng(device), pyro.validation_enabled(False):
        with forked_rng(device):  # the replay below starts from the state the eager step saw
            eager_loss, eager_grads = _eager_loss_and_grads(trainer, probe, beta)
        loss, _, grads = captured(probe, beta)
    if not agree(eager_loss, loss):
        return f"the recorded loss {float(loss):.6g} differs from Pyro's {float(eager_loss):.6g}"
    for name, a, b in zip(trainer.param_names, eager_grads, grads):
        if not agree(a, b):
            return f"the recorded gradient of {name!r} differs from autograd's"
    return None


def why_not_capturable(trainer, mode: str) -> Optional[str]:
    """Why this trainer's model cannot be captured under ``mode`` (None: it can)."""
    model = trainer.model
    if mode == "off":
        return "train.capture = 'off'"
    if not _torch_private.enabled():
        return _torch_private.why_disabled()
    if not isinstance(model, nn.Module):
        return "the model is not a torch.nn.Module"
    if any(n.startswith("param_store:") for n in trainer.param_names):
        return "the model keeps parameters in Pyro's param store (pyro.param), which a recording would freeze"
    if trainer.compile:
        return "compile=True compiles the networks instead"
    declined = declined_by_module(model)
    if declined is not None:
        return declined
    if trainer.config.elbo == "enum":
        # the enumeration's dim allocation and contraction are Python state outside a recording's key and check
        return "train.elbo = 'enum' is not captured (its enumeration runs in Python on every step)"
    if mode == "auto":
        if isinstance(model, SequenceModel):
            planned = planned_steps(trainer)
            if planned < CHAIN_CAPTURE_MIN_STEPS:
                return (f"{CHAIN_SHORT}: this run plans {planned} steps, fewer than the {CHAIN_CAPTURE_MIN_STEPS} "
                        "after which recording a chain's step (its loop over time unrolled) pays for itself, so "
                        "they run eagerly (set train.capture = 'on' to capture it anyway, 'off' to silence this)")
        elif type(model) is not GraphModel:
            return "train.capture = 'auto' captures the built-in models only (set 'on' to capture this one)"
        foreign = [type(m).__name__ for m in model.modules() if not type(m).__module__.startswith(_LIBRARY)]
        if foreign:
            return (f"the model holds a module of a user class ({foreign[0]}), whose Python a recording "
                    "would not re-run (set 'on' to capture it anyway)")
    if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        # its running statistics are updated in place by the eager step, a side effect a replay need not repeat
        return "the model has batch normalization, whose running statistics a recording would not update"
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()):
        return "the model has module hooks, which a recording would not re-run"
    return None


#: steps a run must plan before "auto" records a chain's step: the recording holds the loop over time unrolled and
#: costs as much as a few hundred eager steps (benchmarks/bench_capture_chain.py; the README's "Sequences: the
#: remaining pieces" has the break-even measured for the two sequence examples, both below this)
CHAIN_CAPTURE_MIN_STEPS = 400
#: how the reason that leaves a short run's chain eager starts (said once by a CaptureWarning)
CHAIN_SHORT = "train.capture = 'auto' leaves a chain's steps eager in a short run"


def planned_steps(trainer) -> int:
    """The optimizer steps this fit still plans: epochs left times the batches of an epoch."""
    left = max(int(trainer.config.epochs) - int(trainer.state.epoch), 0)
    return left * -(-int(trainer.data_size) // int(trainer.config.batch_size))


def declined_by_module(model) -> Optional[str]:
    """Why a module of the model says its step cannot be recorded (``capture_problem``, e.g. a spline flow's
    data-dependent masks), else None.  Said by a CaptureWarning even under "auto": the model is a built-in one."""
    if not isinstance(model, nn.Module):
        return None
    return next((m.capture_problem for m in model.modules() if getattr(m, "capture_problem", None)), None)


# classes whose forward is a fixed sequence of tensor operations (Pyro's transforms: a flow guide's or prior's;
# the recording's check still compares a replay with an eager step and warns where they differ)
_LIBRARY = ("pyro_vae.", "torch.nn.", "pyro.nn.", "pyro.distributions.transforms.")


class Captures:
    """The trainer's captured steps, one per key; a key that failed its check stays eager."""

    def __init__(self, trainer, first_step):
        self.trainer = trainer
        self.first_step = first_step  # validation.FirstStepValidation
        self.steps: Dict[tuple, Optional[CapturedStep]] = {}
        self.reason: Optional[str] = None  # why nothing is captured, once known
        self._said_validation = False

    @property
    def shapes(self) -> List[tuple]:
        """The batch shapes that have a recording in use."""
        return [key[0] for key, step in self.steps.items() if step is not None]

    @property
    def mode(self) -> str:
        return self.trainer.config.capture

    def key(self, x, beta):
        """What the program may branch on: each array's name, shape, dtype and device (the first: the batch
        shape), beta == 1, the training flag and the data size."""
        t = self.trainer
        arrays = tuple((name, tuple(v.shape), v.dtype, v.device) for name, v in x.items())
        return (arrays[0][1], arrays, beta == 1.0, bool(t.model.training), t.data_size)

    def usable(self) -> bool:
        """Whether this step may be replayed at all (cheap; the trainer asks before :meth:`get`)."""
        if self.reason is not None or not torch.is_grad_enabled() or self._patched():
            return False
        if self.first_step.stays_on:
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
        self.reason = why_not_capturable(t, self.mode)
        if self.reason is not None:
            declined = declined_by_module(t.model)
            if self.reason.startswith(CHAIN_SHORT):  # the rule's own words say what happens and why
                warnings.warn(self.reason, CaptureWarning, stacklevel=3)
            elif self.mode == "on" or (declined is not None and self.reason == declined):
                warnings.warn(f"train.capture = {self.mode!r}, but {self.reason}: training runs eagerly", CaptureWarning,
                              stacklevel=3)
            return None
        try:
            step = CapturedStep(t, x, beta)
            problem = verify(t, step, x, beta)
        except Exception as e:  # anything the recorder cannot follow: eager is always correct
            step, problem = None, f"it could not be recorded ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        if problem is not None:
            warnings.warn(f"step capture is off for {type(t.model).__name__} (batch {key[0]}): {problem}; "
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
