"""Pyro's SVI convention, a (model, guide) pair of functions, as a latent-variable model: its sites read off a trace.

``SVI(model, guide, ...)`` takes two functions; the protocol asks for an object
that also names its observed site and its latents.  :func:`as_model` wraps such
a pair, reading both names off one trace of guide and model on a few rows:
the observed site is the one that scores the data (the only one, or the one
whose value is the data's observations), the latents are the guide's
continuous sample sites.  The pair's parameters are what ``pyro.param`` and
``pyro.module`` put in Pyro's global param store, as under ``SVI``: a second
fit goes on from them, and ``pyro.clear_param_store()`` drops the ``pyro.param``
ones (a module keeps its weights, which ``pyro.module`` registers again).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from pyro import poutine

from ..data import batch
from ..errors import PyroVAEError
from ..infer.data_name import named_data
from ..infer.probe import TRACE_ERRORS, first_line, likely_cause
from ..infer.rng import forked_rng
from ..infer.sites import is_enumerable, is_latent, is_observed

__all__ = ["FunctionPair", "is_pair", "as_model", "takes_pairs"]

# rows of the data the pair is traced on to read its sites
_TRACE_ROWS = 4


class FunctionPair:
    """A (model, guide) pair of Pyro functions with the sites the protocol names; its parameters are Pyro's global store's."""

    #: models/params.py: the program keeps its parameters in Pyro's global param store, as under SVI
    global_params = True

    def __init__(self, model: Callable, guide: Callable, obs_site: str, latent_sites: Sequence[str]):
        self.model = model
        self.guide = guide
        self.obs_site = obs_site
        self.latent_sites = tuple(latent_sites)

    def __repr__(self) -> str:
        return (f"FunctionPair({_name(self.model)}, {_name(self.guide)}, obs_site={self.obs_site!r}, "
                f"latent_sites={self.latent_sites!r})")


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def is_pair(obj) -> bool:
    """A (model, guide) tuple or list of two callables (what ``SVI`` takes), not a model object."""
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and all(callable(f) for f in obj)


def as_model(obj, data):
    """``obj`` itself, or the :class:`FunctionPair` of a (model, guide) pair, its sites read off one trace on the
    first rows of ``data`` (named arrays, :func:`~pyro_vae.infer.data_name.named_data`'s, whose first array holds
    the observations)."""
    if not is_pair(obj):
        return obj
    model, guide = obj
    first = next(iter(data.values()), None)
    if not hasattr(first, "shape"):
        raise PyroVAEError(f"the data are a {type(first).__name__}: give a tensor or NumPy array of rows, or a mapping "
                           "of named arrays")
    g = min(batch.groups(data), key=lambda g: len(g["absent"]))  # rows with every array present
    few = batch.without(batch.rows(data, g["rows"][:_TRACE_ROWS]), g["absent"])
    try:
        with forked_rng(batch.reference(few).device):
            gtr = poutine.trace(guide).get_trace(**few)
            mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(**few)
    except PyroVAEError:
        raise
    except TRACE_ERRORS as e:
        raise PyroVAEError(f"the model and guide {_name(model)}, {_name(guide)} fail on the first rows of the data "
                           f"({type(e).__name__}: {first_line(e)[:300]}): {likely_cause(e)}") from None
    obs = _observed_site(mtr, next(iter(few.values())))
    latents = [name for name, site in gtr.nodes.items()
               if is_latent(site) and not is_enumerable(site) and name in mtr.nodes]
    if not latents:
        raise PyroVAEError(f"the guide {_name(guide)} draws no continuous latent site that the model has: give both a "
                           "pyro.sample of the same name inside pyro.plate('data')")
    return FunctionPair(model, guide, obs, latents)


def _observed_site(mtr, x: torch.Tensor) -> str:
    """The model's site that scores the observations ``x``: the only observed one, or the one observing ``x``."""
    observed = [name for name, site in mtr.nodes.items() if is_observed(site)]
    if len(observed) == 1:
        return observed[0]
    holding = [name for name in observed if _same(mtr.nodes[name]["value"], x)]
    if len(holding) == 1:
        return holding[0]
    if not observed:
        raise PyroVAEError("the model observes no site: pass the data to its likelihood, pyro.sample(name, d, obs=x)")
    raise PyroVAEError(f"the model observes sites {', '.join(map(repr, observed))} and none of them is the data passed "
                       "unchanged as obs=: pass the observations as obs= as they come, or wrap model and guide in an "
                       "object naming obs_site and latent_sites (see examples/custom_model.py)")


def _same(v, t: torch.Tensor) -> bool:
    return v is t or (torch.is_tensor(v) and v.shape == t.shape and v.data_ptr() == t.data_ptr())



def takes_pairs(fn):
    """Decorate an entry point called as ``fn(model, x, ...)``: the data become named tensors (one array named as
    the model takes it), and a (model, guide) pair its :class:`FunctionPair` (read off the data), before ``fn``
    sees them."""

    @functools.wraps(fn)
    def wrapped(model, x, *args, **kwargs):
        x = named_data(model, x)
        return fn(as_model(model, x), x, *args, **kwargs)

    return wrapped
