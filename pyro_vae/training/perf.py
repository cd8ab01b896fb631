"""The training step's fast paths: optimizer kernel, non-finite guard, validation, CUDA graphs.

Each piece here was measured (``benchmarks/bench_train.py``, README "Performance");
what did not pay was left out.  None of them changes what is computed: the
loss is still the Pyro objective over the model's and guide's sample sites.

- :func:`make_adam`: one fused Adam kernel for every parameter (on CPU about
  4x faster than the foreach update for a 784-400-20 VAE; on CUDA one launch).
- :func:`nonfinite_flag` / :func:`masked_adam_step`: the NaN/Inf guard as a
  device tensor, and an update the fused kernel itself skips when the flag is
  set (``found_inf``, the mechanism ``GradScaler`` uses), so on CUDA the host
  reads the flag once, after the step is queued, instead of stalling twice in
  the middle of it.  A skipped step leaves parameters, moments and the step
  counter bit-identical.
- :func:`direct_adam_step`: the fused kernel called without ``Optimizer.step``'s
  Python around it (bit-identical).
- :func:`may_skip_validation`: Pyro validation (argument, support and shape
  checks on every distribution, every step) runs for a trainer's first step
  and is then switched off, restored when ``fit`` returns — only for models
  whose likelihood checks the data's support up front.
- :class:`GraphedStep`: the whole SVI step captured once as a CUDA graph and
  replayed (opt-in, ``Trainer(cuda_graph=True)``).
- :func:`compile_networks`: ``torch.compile`` of the encoder/decoder networks
  (opt-in, ``Trainer(compile=True)``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

#: ``Trainer(validation=...)``: ``auto`` skips per-step validation after the first
#: step when the model's likelihood has a support check; ``always`` never skips
#: it; ``first`` skips it for any model (the caller vouches for the data).
VALIDATION_MODES = ("auto", "always", "first")


def make_adam(params: Sequence[torch.Tensor], lr: float, capturable: bool = False) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused kernel where the device supports it, else foreach."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, capturable=capturable)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, foreach=True)


def is_fused(optimizer) -> bool:
    return all(g.get("fused") for g in optimizer.param_groups)


def restore_kernel_choice(optimizer, fused: bool, foreach: Optional[bool], capturable: bool) -> None:
    """Re-apply the kernel flags after ``load_state_dict``, which copies a checkpoint's flags over ours.

    They choose an implementation, not a hyperparameter: a checkpoint written
    by an older (foreach) trainer resumes on the fused kernel, with the same state.
    """
    for group in optimizer.param_groups:
        group["fused"], group["foreach"], group["capturable"] = fused, foreach, capturable


def nonfinite_flag(loss: Optional[torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor on the device: is the loss or any gradient NaN/Inf?  No host sync."""
    return nonfinite_in(loss, [p.grad for p in params if p.grad is not None])


def nonfinite_in(loss: Optional[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`nonfinite_flag` for given gradient tensors (the captured step computes them itself)."""
    parts = []
    if grads:
        # one norm per tensor (a fused reduction); a NaN/Inf anywhere makes its norm non-finite
        parts.append(torch.stack(torch._foreach_norm(list(grads))))
    if loss is not None:
        parts.append(loss.detach().reshape(1))
    if not parts:
        return torch.zeros((), dtype=torch.bool)
    values = torch.cat(parts) if len(parts) > 1 else parts[0]
    return ~torch.isfinite(values).all()


def direct_adam_step(optimizer, found_inf: Optional[torch.Tensor] = None) -> bool:
    """``optimizer.step()`` for a plain fused Adam as the two kernel calls it makes; False: not applicable.

    ``Optimizer.step`` spends about 50 us of Python per call (hooks, profiler
    record, grouping tensors by device) around a 0.4 ms kernel for a 784-400-20
    VAE: 2% of a step at batch 32.  When the group is the one ``make_adam``
    builds (fused, no amsgrad/maximize/weight decay variants, float lr, state
    initialized by an earlier ``step()``, one device and dtype), this issues the
    same ``_foreach_add_`` / ``_fused_adam_`` calls with the same arguments, so
    the result is bit-identical (tests/test_capture.py).  Anything else, or a
    torch whose kernel signature differs, falls back to ``optimizer.step()``.
    """
    if getattr(optimizer, "_direct_unusable", False) or len(optimizer.param_groups) != 1:
        return False
    g = optimizer.param_groups[0]
    if not g["fused"] or g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"] \
            or g.get("decoupled_weight_decay") or torch.is_tensor(g["lr"]):
        return False
    params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
    state = optimizer.state
    for p in g["params"]:
        if p.grad is None:
            continue
        st = state.get(p)
        if not st or "exp_avg" not in st:
            return False  # the first step initializes the state: Adam.step() does it
        params.append(p); grads.append(p.grad)
        exp_avgs.append(st["exp_avg"]); exp_avg_sqs.append(st["exp_avg_sq"]); steps.append(st["step"])
    if not params:
        return True
    if len({(t.device, t.dtype) for t in params}) != 1 or any(p.grad.dtype != p.dtype for p in params):
        return False
    beta1, beta2 = g["betas"]
    torch._foreach_add_(steps, 1)
    try:
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=g["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"],
                           maximize=False, grad_scale=None, found_inf=found_inf)
    except (TypeError, RuntimeError, AttributeError):  # another torch's kernel: the public path from now on
        torch._foreach_sub_(steps, 1)
        optimizer._direct_unusable = True
        return False
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))
    return True


def masked_adam_step(optimizer, bad: torch.Tensor) -> None:
    """``optimizer.step()`` that the fused kernel skips on the device when ``bad`` is true.

    ``found_inf`` is the fused Adam's own input for this (the kernel returns
    early and the step counters are decremented back), so a skipped step
    changes nothing, without the host ever looking at ``bad``.
    """
    found_inf = bad.to(torch.float32)
    if direct_adam_step(optimizer, found_inf):
        return
    optimizer.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def may_skip_validation(model, mode: str) -> bool:
    """Whether per-step Pyro validation may be switched off after the first step."""
    if mode == "always":
        return False
    if mode == "first":
        return True
    # Without validation, Pyro no longer checks that observations lie in the
    # likelihood's support (a Bernoulli scores 0.5 silently).  That check then
    # has to happen once, up front, which only a likelihood with check_support offers.
    likelihood = getattr(model, "likelihood", None)
    return callable(getattr(likelihood, "check_support", None))


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


class GraphedStep:
    """One SVI step — guide, model, loss, backward, masked fused Adam update — as a CUDA graph.

    Training shapes are static (every full batch has the same size, beta is
    constant without warm-up), and the Pyro program's Python (tracing,
    messengers, ELBO assembly) is only needed to *record* the kernels; a
    replay costs a few microseconds of host time, which is where Pyro's fixed
    per-step cost goes on a GPU.  Requirements, checked by the trainer before
    use: a CUDA device, Pyro validation off (validation reads values back),
    a sync-free objective (``objectives.SyncFree*``) and a capturable fused Adam.

    The graph holds the addresses of the parameters, gradients and optimizer
    moments; :meth:`valid` notices when any was replaced (a rollback or a
    resume loads new optimizer state tensors) so the step is captured again.
    """

    WARMUP_STEPS = 3  # eager steps on a side stream before capture (autograd and Adam allocate state)

    def __init__(self, trainer, batch_shape, beta: float):
        self.trainer = trainer
        self.beta = beta
        self.static_x = torch.zeros(batch_shape, device=trainer.device)
        self.graph = None
        self.warm = 0
        self.loss = self.bad = None
        self._addresses = None
        self._side = torch.cuda.Stream(device=trainer.device)

    def _current_addresses(self):
        opt = self.trainer.optimizer
        out = [p.data_ptr() for p in self.trainer.params]
        for p in self.trainer.params:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                t = opt.state.get(p, {}).get(key)
                out.append(t.data_ptr() if t is not None else 0)
        return tuple(out)

    def valid(self, x: torch.Tensor, beta: float) -> bool:
        if tuple(x.shape) != tuple(self.static_x.shape) or beta != self.beta:
            return False
        if self.graph is not None and self._current_addresses() != self._addresses:
            self.graph = None  # state tensors were replaced: record the step again
            self.warm = self.WARMUP_STEPS
        return True

    def _body(self):
        t = self.trainer
        loss = t._loss(self.static_x, self.beta)
        loss.backward()
        bad = nonfinite_flag(loss, t.params)
        masked_adam_step(t.optimizer, bad)
        return loss.detach(), bad

    def __call__(self, x: torch.Tensor):
        """Run one step on ``x``; returns ``(loss, bad)`` device tensors (valid until the next call)."""
        self.static_x.copy_(x, non_blocking=True)
        opt = self.trainer.optimizer
        if self.graph is None and self.warm < self.WARMUP_STEPS:
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                opt.zero_grad(set_to_none=True)
                loss, bad = self._body()
            torch.cuda.current_stream().wait_stream(self._side)
            self.warm += 1
            return loss, bad
        if self.graph is None:
            opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.loss, self.bad = self._body()
            self.graph = graph
            self._addresses = self._current_addresses()
        self.graph.replay()
        return self.loss, self.bad
