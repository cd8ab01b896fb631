"""Step engines: one SVI step (loss, gradients, update-or-skip) behind one interface, ``step(x, beta)``.

``EagerEngine`` runs the Pyro program; ``CapturedEngine`` replays a recording
of it (capture.py) where one exists; ``GraphEngine`` replays the whole step as
a CUDA graph (opt-in).  The faster engines hold the slower one to fall back on
for a step they cannot take.  None applies a non-finite step: the result says
so and the trainer's policy (nonfinite.py) decides what happens next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from pyro.infer.util import is_validation_enabled

from . import _torch_private
from ..data import batch
from ..infer.rng import forked_rng
from ..runtime.distributed import GradientSync
from .nonfinite import is_invalid_parameter, nonfinite_flag
from .optim import is_fused, masked_adam_step, update_or_skip


@dataclass
class StepResult:
    loss: Optional[torch.Tensor]  # detached, full-data scale; None when a distribution refused its arguments
    finite: bool  # False: the update was not applied
    engine: str  # which engine took the step
    error: Optional[ValueError] = None  # a distribution's argument check that failed (validation on)


LossFn = Callable[[torch.Tensor, float], torch.Tensor]


class EagerEngine:
    """The Pyro program run as written: autograd, then the update unless the loss or a gradient is NaN/Inf.

    ``masked`` (CUDA): queue the update for the fused kernel to skip on the
    device, rather than reading the loss back before the backward pass.
    ``sync`` (runtime/distributed.py): with several processes, every engine averages
    the gradients across ranks through it before the update-or-skip.
    """

    name = "eager"

    def __init__(self, loss: LossFn, params: Sequence[torch.Tensor], optimizer, masked: bool = False,
                 sync: Optional[GradientSync] = None):
        self.loss, self.params, self.optimizer, self.masked = loss, params, optimizer, masked
        self.sync = sync or GradientSync()

    def step(self, x: torch.Tensor, beta: float = 1.0) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss = self.loss(x, beta)
        except ValueError as e:
            # with validation on, a NaN that reaches a distribution (e.g. decoder logits)
            # raises here instead of giving a NaN loss: the same event, under the same policy
            if not is_invalid_parameter(e):
                raise
            if self.sync.active:
                self.sync.reduce(None, self.params, True)  # the other ranks wait for this step's reduce
            return StepResult(None, False, self.name, e)
        if self.sync.active:
            if torch.isfinite(loss):  # a NaN loss: no backward pass; its flag reaches every rank
                loss.backward()
            loss, bad = self.sync.reduce(loss, self.params, nonfinite_flag(loss, self.params))
            return StepResult(loss, update_or_skip(self.optimizer, bad, self.masked), self.name)
        if self.masked:
            loss.backward()
            finite = update_or_skip(self.optimizer, nonfinite_flag(loss, self.params), masked=True)
        else:
            finite = bool(torch.isfinite(loss))  # a NaN loss needs no backward pass
            if finite:
                loss.backward()
                finite = update_or_skip(self.optimizer, nonfinite_flag(None, self.params), masked=False)
        return StepResult(loss.detach(), finite, self.name)


def validate_batch(loss: LossFn, x, beta, device) -> Optional[ValueError]:
    """Pyro's argument and support checks on batch ``x``; the random streams are left as they were."""
    try:
        with forked_rng(device), torch.no_grad():
            loss(x, beta)
    except ValueError as e:
        if not is_invalid_parameter(e):
            raise
        return e
    return None


class CapturedEngine:
    """The recorded loss and gradients for this batch's shape, then the same update as an eager step."""

    name = "captured"

    def __init__(self, captures, fallback: EagerEngine, device: torch.device):
        self.captures, self.fallback, self.device = captures, fallback, device

    def step(self, x: torch.Tensor, beta: float = 1.0) -> StepResult:
        if not self.captures.usable():
            return self.fallback.step(x, beta)
        if is_validation_enabled():
            # the trainer's first step: Pyro's checks run on this batch (a forward pass on
            # the side), then the update comes from the recording like every later step's,
            # so a resumed run computes exactly what a straight one does
            error = validate_batch(self.fallback.loss, x, beta, self.device)
            if error is not None:
                if self.fallback.sync.active:
                    self.fallback.sync.reduce(None, self.fallback.params, True)
                return StepResult(None, False, self.name, error)
        captured = self.captures.get(x, beta)
        if captured is None:
            return self.fallback.step(x, beta)
        params, optimizer = self.fallback.params, self.fallback.optimizer
        for p in params:  # last step's gradients must not stay alive through this one (peak memory)
            p.grad = None
        loss, bad, grads = captured(x, beta)
        for p, g in zip(params, grads):
            p.grad = g
        if self.fallback.sync.active:  # the recorded gradients, averaged across ranks
            loss, bad = self.fallback.sync.reduce(loss, params, bad)
        return StepResult(loss, update_or_skip(optimizer, bad, self.fallback.masked), self.name)


class GraphEngine:
    """The whole step as a replayed CUDA graph, for full batches at a fixed beta after the validated first step."""

    name = "cuda_graph"

    def __init__(self, fallback, eager: EagerEngine, batch_size: int, fixed_beta: bool, first_step,
                 device: torch.device):
        self.fallback, self.eager, self.batch_size, self.fixed_beta = fallback, eager, batch_size, fixed_beta
        self.first_step, self.device = first_step, device
        self.graphed: Optional[GraphedStep] = None

    def _ready(self, x, beta) -> bool:
        if len(x) != 1 or not self.first_step.validated or not _torch_private.enabled():
            return False  # the first step runs with Pyro validation on; the graph needs the masked update
        if batch.num_rows(x) != self.batch_size or not self.fixed_beta:
            return False  # a short last batch, or a beta that changes every step
        eager = self.eager
        if not is_fused(eager.optimizer):
            return False
        if self.graphed is None or not self.graphed.valid(x, beta):
            self.graphed = GraphedStep(eager.loss, eager.params, eager.optimizer, x, beta, self.device)
        return True

    def step(self, x: torch.Tensor, beta: float = 1.0) -> StepResult:
        if not self._ready(x, beta):
            return self.fallback.step(x, beta)
        loss, bad = self.graphed(x)
        # one read per step, after the whole step (update included) is queued
        loss_value, is_bad = torch.stack([loss.float(), bad.float()]).tolist()
        if is_bad:  # the kernel skipped the update
            return StepResult(loss.clone(), False, self.name)
        return StepResult(torch.tensor(loss_value), True, self.name)

    @property
    def captured(self) -> bool:
        return self.graphed is not None and self.graphed.graph is not None


class GraphedStep:
    """One SVI step (guide, model, loss, backward, masked fused Adam) recorded as a CUDA graph.

    The Pyro program's Python is only needed to record the kernels; a replay
    costs a few microseconds of host time.  Needs Pyro validation off (it reads
    values back), a sync-free objective and a capturable fused Adam.  The graph
    holds the addresses of parameters, gradients and optimizer moments;
    :meth:`valid` notices when one was replaced (a rollback or a resume loads
    new optimizer tensors) so the step is recorded again.
    """

    WARMUP_STEPS = 3  # eager steps on a side stream before capture (autograd and Adam allocate state)

    def __init__(self, loss: LossFn, params, optimizer, like, beta: float, device):
        self.loss, self.params, self.optimizer = loss, params, optimizer
        self.beta = beta
        # the batch's one array, at a fixed address the graph reads (``like``: a batch of its name and shape)
        self.static_x = {name: torch.zeros(tuple(v.shape), device=device) for name, v in like.items()}
        self.graph = None
        self.warm = 0
        self.out = None
        self._addresses = None
        self._side = torch.cuda.Stream(device=device)

    def _current_addresses(self):
        out = [p.data_ptr() for p in self.params]
        for p in self.params:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                t = self.optimizer.state.get(p, {}).get(key)
                out.append(t.data_ptr() if t is not None else 0)
        return tuple(out)

    def valid(self, x, beta: float) -> bool:
        if ({k: tuple(v.shape) for k, v in x.items()} != {k: tuple(v.shape) for k, v in self.static_x.items()}
                or beta != self.beta):
            return False
        if self.graph is not None and self._current_addresses() != self._addresses:
            self.graph = None  # state tensors were replaced: record the step again
            self.warm = self.WARMUP_STEPS
        return True

    def _body(self):
        loss = self.loss(self.static_x, self.beta)
        loss.backward()
        bad = nonfinite_flag(loss, self.params)
        masked_adam_step(self.optimizer, bad)
        return loss.detach(), bad

    def __call__(self, x):
        """Run one step on ``x``; returns ``(loss, bad)`` device tensors (valid until the next call)."""
        for name, v in x.items():
            self.static_x[name].copy_(v, non_blocking=True)
        if self.graph is None and self.warm < self.WARMUP_STEPS:
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                self.optimizer.zero_grad(set_to_none=True)
                out = self._body()
            torch.cuda.current_stream().wait_stream(self._side)
            self.warm += 1
            return out
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.out = self._body()
            self.graph = graph
            self._addresses = self._current_addresses()
        self.graph.replay()
        return self.out


def compile_networks(model, backend: str = "inductor") -> List[str]:
    """``nn.Module.compile()`` the model's networks in place (state-dict keys unchanged).

    Only the networks: Pyro's tracing is Python that ``torch.compile`` would
    break into many graphs.  Returns the names of the modules compiled.
    """
    done = []
    for name in ("encoder", "decoder"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile(backend=backend, dynamic=False)
            done.append(name)
    return done
