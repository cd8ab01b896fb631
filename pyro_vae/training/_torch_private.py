"""Every private or experimental torch API the trainer uses, behind one version gate.

The captured step records with ``make_fx``, rewrites the FX graph by ATen
op overloads (and their ``_schema``), and replays it with TorchScript; the
NaN/Inf check uses ``torch._foreach_norm``; the Adam update calls
``torch._fused_adam_`` directly, and the CUDA masked update passes it (or the
optimizer) ``found_inf``, the flag ``GradScaler`` uses.  None of these
is a stable API, so they are used only on the torch versions they were tested
on (:data:`TESTED`), and ``PYRO_VAE_TORCH_PRIVATE=0`` shuts them off anywhere.
With the gate shut every caller takes the public path: an eager Pyro step,
``optimizer.step()`` after a host-side NaN check.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Sequence

import torch

from . import graph_passes

#: [low, high) torch (major, minor) versions the private paths were tested on; widen it after running
#: tests/test_capture.py on another version
TESTED = ((2, 13), (2, 14))
#: set to 0 to use only public torch APIs (eager steps, ``optimizer.step()``)
ENV = "PYRO_VAE_TORCH_PRIVATE"


def _version() -> tuple:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def enabled() -> bool:
    """Whether the private fast paths may be used (read on each call, so the switch works at run time)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    low, high = TESTED
    return low <= _version() < high


def why_disabled() -> Optional[str]:
    """A reason for the CaptureWarning when the gate is shut (None when open)."""
    if enabled():
        return None
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV}=0 allows public torch APIs only"
    return f"torch {torch.__version__} is outside the versions step capture was tested on"


# -- the NaN/Inf flag ------------------------------------------------------------------------


def norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One 2-norm per tensor, stacked: a NaN/Inf anywhere in a tensor makes its norm non-finite."""
    if enabled():
        return torch.stack(torch._foreach_norm(list(tensors)))  # one fused reduction
    return torch.stack([torch.linalg.vector_norm(t) for t in tensors])


# -- the Adam update ---------------------------------------------------------------------------


def fused_adam_step(optimizer: torch.optim.Optimizer, found_inf: Optional[torch.Tensor] = None) -> bool:
    """``optimizer.step()`` for a plain fused Adam as the two kernel calls it makes; False: not applicable.

    This skips ``Optimizer.step``'s Python (hooks, profiler, grouping tensors by
    device) around the kernel; benchmarks/bench_train.py's ablation measures it.
    It issues the same ``_foreach_add_`` / ``_fused_adam_`` calls with the same
    arguments, so the result is bit-identical (tests/test_capture.py).  Only for
    the group ``make_adam`` builds (fused, no amsgrad/maximize/weight-decay
    variants, float lr, state initialized by an earlier ``step()``, one device
    and dtype); anything else, or a kernel whose signature differs, is left to
    ``optimizer.step()``.
    """
    if not enabled() or getattr(optimizer, "_direct_unusable", False) or len(optimizer.param_groups) != 1:
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


def masked_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> bool:
    """``optimizer.step()`` that the fused kernel skips on the device when ``found_inf`` is 1; False: gate shut.

    The fused Adam reads ``found_inf`` as ``GradScaler`` leaves it (the kernel
    returns early and the step counters are decremented back), so a skipped step
    changes nothing and the host never has to read the flag first.
    """
    if not enabled():
        return False
    if fused_adam_step(optimizer, found_inf):
        return True
    optimizer.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf
    return True


# -- recording and replay --------------------------------------------------------------------


def record(fn: Callable, inputs: Sequence[torch.Tensor]) -> torch.fx.GraphModule:
    """The ATen ops ``fn(*inputs)`` runs (its backward too, if it calls autograd), as one FX graph."""
    from torch.fx.experimental.proxy_tensor import make_fx

    return simplify(make_fx(fn, tracing_mode="real")(*inputs))


def script(graph: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> Callable:
    """The graph under TorchScript's interpreter (no Python per op); the graph itself if TorchScript refuses it."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(graph, tuple(inputs), check_trace=False)
    except Exception:  # a graph TorchScript cannot hold: the FX replay is the same computation
        return graph


def replay(run: Callable, inputs: Sequence[torch.Tensor]):
    """Call a :func:`script` result.  The plain interpreter (no profiling executor) runs one plan on
    every call, so a replay is bit-identical however many came before (exact resume)."""
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return run(*inputs)


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


def _written_fresh(first) -> bool:
    """Whether an in-place op's target is a fresh tensor no other node reads: an ``empty`` (a random draw's), or
    the new result of an out-of-place op whose one user is the in-place op (a clamp's backward mask)."""
    if not isinstance(first, torch.fx.Node) or first.op != "call_function":
        return False
    if first.target in (_aten.empty.memory_format, _aten.empty_like.default, _aten.empty_strided.default):
        return True
    op = first.target
    return isinstance(op, torch._ops.OpOverload) and not op._schema.is_mutable and len(first.users) == 1 \
        and all(r.alias_info is None for r in op._schema.returns)


def simplify(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop the recording's no-op nodes (copies, same-shape views, x*1, t(t(x))) and dead code, and apply the exact
    rewrites of graph_passes.py.

    Only safe because no node of a value we forward is later written in place:
    the recording's in-place ops all fill fresh tensors that nothing else reads
    (random draws into ``empty`` ones, a mask combined in place), which this
    checks, leaving the graph as recorded otherwise.
    """
    graph = gm.graph
    for node in graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
                and node.target._schema.is_mutable:
            first = node.args[0] if node.args else None
            if not _written_fresh(first):
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
    graph_passes.rewrite(graph)  # exact: repeats merged, lgamma/digamma of a broadcast computed once (its docstring)
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

    A [B, D] elementwise result then overwrites a buffer still in cache instead
    of a newly allocated one, as autograd's own backward formulas do.  ``a`` must
    have this node as its only user (so no view of it exists and no later node
    reads it), come from an op that returns a new tensor, and have the result's
    shape and dtype (no broadcasting into it).
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
