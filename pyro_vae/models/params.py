"""One model, one parameter scope: the Pyro param-store entries a model's program sees, kept per model object.

A hand-written model keeps its globals (``pyro.param``) and its networks' weights
(``pyro.module``) in Pyro's param store under fixed names, so two models of one
class in one process would share them, and a private store (a diagnosis) would
start them afresh.  Every entry point that runs a model's program therefore runs
it inside :func:`model_params`: Pyro's store then holds that model's own entries
only (the very tensors, so an optimizer holding them keeps working), and on
leaving the outermost scope those entries are also put back into Pyro's global
store, so a script reading ``pyro.param("df")`` after training sees the trained
value.  A model met for the first time takes over the global store's entries
that no scope published (parameters a plain-Pyro training loop left there), so a
model trained outside pyro_vae is evaluated at its trained values.

Built-in models (PyroModules holding their own parameters) put nothing in the store.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import pyro
import torch
from pyro.poutine.messenger import Messenger

from ..errors import PyroVAEError


def _empty_state() -> dict:
    return {"params": {}, "constraints": {}}


@dataclass
class ParamScope:
    """A model's own param-store state (as ``ParamStoreDict.get_state`` gives it), and checkpoint values
    for parameters its program has not created yet (applied when it does, with the program's constraint)."""

    state: dict = field(default_factory=_empty_state)
    pending: Dict[str, torch.Tensor] = field(default_factory=dict)  # name -> saved unconstrained value
    borrowed: set = field(default_factory=set)  # names taken over from the global store, not made by the program


_SCOPES: Dict[int, tuple] = {}  # id(model) -> (a reference to the model, its scope): identity, never __eq__
_ACTIVE: List[object] = []  # the models whose scopes are entered, innermost last
_PUBLISHED: Dict[int, weakref.ref] = {}  # id -> the unconstrained tensors a scope put into the global store


def _published(t: torch.Tensor) -> bool:
    ref = _PUBLISHED.get(id(t))
    return ref is not None and ref() is t


def _unowned_global_entries() -> dict:
    """The global store's entries that no model's scope put there (a plain-Pyro run's parameters)."""
    state = pyro.get_param_store().get_state()
    names = [n for n, t in state["params"].items() if not _published(t)]
    return {"params": {n: state["params"][n] for n in names}, "constraints": {n: state["constraints"][n] for n in names}}


def _known(model) -> Optional[ParamScope]:
    held = _SCOPES.get(id(model))
    return held[1] if held is not None and held[0]() is model else None


def scope_of(model) -> ParamScope:
    """The model's scope, made on first use (taking over unowned global entries when no scope is entered)."""
    scope = _known(model)
    if scope is not None:
        return scope
    state = _unowned_global_entries() if not _ACTIVE else _empty_state()
    scope = ParamScope(state, borrowed=set(state["params"]))
    key = id(model)

    def forget(ref):
        if _SCOPES.get(key, (None,))[0] is ref:
            del _SCOPES[key]

    try:
        ref = weakref.ref(model, forget)
    except TypeError:  # no weak references to it: the table keeps the model alive instead
        ref = (lambda m: lambda: m)(model)
    _SCOPES[key] = (ref, scope)
    return scope


class _Restore(Messenger):
    """Applies checkpoint values to parameters as the program creates them (it knows their constraints)."""

    def __init__(self, scope: ParamScope):
        super().__init__()
        self.scope = scope

    def _pyro_param(self, msg):
        name = msg["name"]
        store = pyro.get_param_store()
        if name not in self.scope.pending or name in store or len(msg["args"]) < 2:
            return
        constraint = msg["kwargs"].get("constraint", torch.distributions.constraints.real)
        store.setdefault(name, msg["args"][1], constraint)
        _copy_saved(store, name, self.scope.pending.pop(name))


def _copy_saved(store, name: str, value: torch.Tensor) -> None:
    target = store[name].unconstrained()
    if target.shape != value.shape:
        raise PyroVAEError(f"the checkpoint's parameter {name!r} has shape {tuple(value.shape)} but the model makes "
                           f"it {tuple(target.shape)}: load the checkpoint into the model it was trained with")
    with torch.no_grad():
        target.copy_(value)


def _apply_pending(scope: ParamScope) -> None:
    """Saved values for parameters that now exist (made where ``_Restore`` did not see them, e.g. inside a block)."""
    store = pyro.get_param_store()
    for name in [n for n in scope.pending if n in store]:
        _copy_saved(store, name, scope.pending.pop(name))


def _publish(state: dict) -> None:
    """Put a model's entries into the global store (the same tensors), replacing entries of the same names."""
    store = pyro.get_param_store()
    for name in state["params"]:
        if name in store:
            del store[name]
    store.set_state({"params": dict(state["params"]), "constraints": dict(state["constraints"])})
    for t in state["params"].values():
        _PUBLISHED[id(t)] = weakref.ref(t)


@contextlib.contextmanager
def model_params(model):
    """Run ``model``'s program inside its own parameter scope (re-entrant; see the module docstring).

    A model marked ``global_params`` (a (model, guide) pair of functions, models/pair.py) runs on Pyro's global
    store itself, as under ``SVI``; checkpoint values still reach its parameters as the program makes them.
    """
    if getattr(model, "global_params", False):
        scope = scope_of(model)
        _apply_pending(scope)
        with _Restore(scope) if scope.pending else contextlib.nullcontext():
            yield
        _apply_pending(scope)
        return
    if _ACTIVE and (_ACTIVE[-1] is model or _known(model) is None):
        # the same model again, or an object met first inside a scope (a diagnosis's wrapper of the
        # model's program with another guide): it runs on the parameters already in the store
        yield
        return
    store = pyro.get_param_store()
    scope = scope_of(model)
    outer = store.get_state()
    store.clear()
    store.set_state(scope.state)
    _ACTIVE.append(model)
    try:
        _apply_pending(scope)
        with _Restore(scope) if scope.pending else contextlib.nullcontext():
            yield
        _apply_pending(scope)
    finally:
        _ACTIVE.pop()
        scope.state = store.get_state()
        store.clear()
        store.set_state(outer)
        if not _ACTIVE:
            _publish(scope.state)


@contextlib.contextmanager
def scratch_params():
    """Parameters created inside (a diagnosis's local guides) are dropped on leaving; existing ones are kept."""
    store = pyro.get_param_store()
    before = store.get_state()
    try:
        yield
    finally:
        store.clear()
        store.set_state(before)


def restore_params(model, values: Dict[str, torch.Tensor]) -> None:
    """Load saved unconstrained values (param-store name -> tensor) into the model's scope.

    Parameters the program has made already are overwritten now; the others
    when the program first makes them under :func:`model_params`.
    """
    scope = scope_of(model)
    for name in scope.borrowed & set(values):
        # a tensor another program left in the global store: the model gets its own, made with the saved value
        scope.state["params"].pop(name, None)
        scope.state["constraints"].pop(name, None)
    scope.borrowed -= set(values)
    scope.pending.update({name: v.detach() for name, v in values.items()})
    with model_params(model):
        pass  # entering applies the values of existing parameters


def _first_argument(*args, **kwargs):
    return args[0] if args else kwargs["model"]


def runs_model(get_model: Callable = _first_argument):
    """Decorate an entry point that runs a model's program: the body runs in the model's scope.

    ``get_model`` picks the model from the call's arguments (default: the first one).
    """

    def wrap(fn):
        @functools.wraps(fn)
        def scoped(*args, **kwargs):
            with model_params(get_model(*args, **kwargs)):
                return fn(*args, **kwargs)

        return scoped

    return wrap


#: for methods of an object holding the model as ``self.model`` (the trainer)
runs_own_model = runs_model(lambda self, *args, **kwargs: self.model)
