"""How a program takes its data: the name one array is given, read off the model's signature, and the data named by it.

Inside the library data are always named arrays, and a program is always
called by keyword, ``model(**data)`` (data/batch.py).  One array a user hands
in (``pv.fit(model, x)``, a data file, ``model(x)`` written by the user) is named
once, where it enters, after the parameter the program takes it by:

- a program's model (a method or, for a ``(model, guide)`` pair, the model
  function): its first parameter, ``model(self, x)`` -> ``"x"``,
  ``model(images)`` -> ``"images"``;
- a model that takes its data as ``**data`` (a declared graph,
  ``model(*args, **data)``): its observed site, ``obs_site``.

A first parameter that cannot be passed by name (positional-only, ``x, /``, or
``*args`` without ``**kwargs``) is refused in one line, as is a guide that does
not take the model's name: Pyro passes both the same arguments, and so does
pyro_vae, by name.
"""

from __future__ import annotations

import inspect
from typing import Callable, Mapping, Optional

from ..data import batch
from ..errors import PyroVAEError

__all__ = ["data_name", "named_data"]

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _signature(fn: Callable) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or an extension callable: nothing to read
        return None


def _label(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _first_name(fn: Callable, obs_site: Optional[str]) -> Optional[str]:
    """The name ``fn`` takes its data by; None when its signature cannot be read."""
    sig = _signature(fn)
    if sig is None:
        return None
    params = list(sig.parameters.values())
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    first = params[0] if params else None
    if first is not None and first.kind in _NAMED:
        return first.name
    if takes_kwargs and obs_site is not None:
        return obs_site
    if first is not None and first.kind is inspect.Parameter.POSITIONAL_ONLY:
        fix = f"make {first.name} a normal parameter (remove the '/' after it)"
    elif first is not None and first.kind is inspect.Parameter.VAR_POSITIONAL:
        fix = f"name the data parameter ({_label(fn)}(self, x) rather than *{first.name})"
    else:
        fix = f"give it a data parameter ({_label(fn)}(self, x))"
    raise PyroVAEError(f"{_label(fn)}{sig} cannot take the data by name, as pyro_vae passes it: {fix}")


def _takes(fn: Callable, name: str) -> bool:
    sig = _signature(fn)
    if sig is None:
        return True
    p = sig.parameters.get(name)
    return (p is not None and p.kind in _NAMED) or any(
        q.kind is inspect.Parameter.VAR_KEYWORD for q in sig.parameters.values())


def data_name(model) -> str:
    """The name one array of data takes for ``model`` (a model object, or a ``(model, guide)`` pair of functions).

    The model's first data parameter, or its ``obs_site`` where it takes ``**data``; the guide must take the
    same name.  An unreadable signature (a builtin callable) gets ``obs_site``, else ``"x"``.
    """
    if isinstance(model, (tuple, list)) and len(model) == 2:
        fn, guide, obs = model[0], model[1], None
    else:
        fn, guide, obs = getattr(model, "model", None), getattr(model, "guide", None), getattr(model, "obs_site", None)
    if not callable(fn):
        return obs if isinstance(obs, str) else "x"
    name = _first_name(fn, obs if isinstance(obs, str) else None)
    if name is None:
        return obs if isinstance(obs, str) else "x"
    if callable(guide) and not _takes(guide, name):
        raise PyroVAEError(f"the model takes the data as {name!r} but its guide {_label(guide)}{_signature(guide)} "
                           f"has no parameter {name!r}: pyro_vae passes model and guide the data by name, as Pyro "
                           f"passes them the same arguments; name the guide's data parameter {name!r} too")
    return name


def named_data(model, data, what: str = "the data"):
    """``data`` as named arrays for ``model``: a mapping as it is, one array named :func:`data_name` (None stays
    None)."""
    if data is None:
        return None
    return batch.named(data, "" if isinstance(data, Mapping) else data_name(model), what)
