"""Prior-predictive draws from any model's program: ``model(x)`` traced unconditioned on rows of the data's shape.

A program written as ``model(x)`` usually reads ``x`` for its plate size only,
so tracing ``poutine.uncondition(model)`` on n placeholder rows draws n
samples x ~ p(x).  A program that reads the values of ``x`` (a conditional
model) would draw from something else; it is traced on two different
placeholders with the same random numbers, and refused when they disagree.

A count likelihood (multinomial, binomial) takes its number of trials from the
data, as a topic model reads each document's length off its row: such a
program draws x ~ p(x | each row's total) on rows of real data (placeholders
of zeros would ask for zero trials), and is refused when it reads more of a
row than its total (the draws change when each row's columns are rotated).
A program whose draws differ on the two placeholders but that reads only
each row's total (an observed library size, scVI's ``x.sum(-1)``) is found
the same way on real rows: the draws must not change when each row's columns
are rotated, nor when its total is spread evenly over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import pyro.distributions as dist
from pyro import poutine

from ..data import batch
from ..errors import PyroVAEError
from ..infer.data_name import data_name
from ..infer.rng import isolated_rng
from .params import model_params
from .protocol import check_protocol, eval_mode, model_device


def _trace_obs(model, rows, seed: int, given: Optional[dict] = None) -> dict:
    """The observed site of one trace of the model unconditioned on ``rows``."""
    # a given array that is a sample site of its own (a partial label) stays observed at its value:
    # uncondition alone would draw it from its prior
    program = poutine.condition(poutine.uncondition(model.model), data=dict(given or {}))
    with isolated_rng(seed, batch.reference(rows).device):
        tr = poutine.trace(program).get_trace(**rows)
    site = tr.nodes.get(model.obs_site)
    if site is None or site["type"] != "sample":
        raise PyroVAEError(f"the model has no sample site {model.obs_site!r} (its obs_site): pyro-vae sample draws "
                           "that site; name the observed site in obs_site")
    return site


def _value(site: dict, mean: bool) -> torch.Tensor:
    return site_mean(site["fn"], site["name"]) if mean else site["value"].detach()


def counts_trials(fn) -> bool:
    """Whether a distribution counts successes in a number of trials it is given (its support ends there)."""
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, (torch.distributions.Multinomial, torch.distributions.Binomial, dist.BetaBinomial,
                           dist.DirichletMultinomial))


def site_mean(fn, name: str) -> torch.Tensor:
    """The mean of a site's distribution; a categorical's over its levels 0..K-1 (torch's own is NaN)."""
    base = fn
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Categorical):
        m = base.probs @ torch.arange(base.probs.shape[-1], dtype=base.probs.dtype, device=base.probs.device)
    else:
        try:
            m = fn.mean
        except NotImplementedError:
            m = None
    if m is None or not bool(torch.isfinite(m).all()):
        raise PyroVAEError(f"the distribution of site {name!r} ({type(fn).__name__}) has no finite mean to show: "
                           "use draws instead of means (pyro-vae sample --draws)")
    return m.detach()


def given_rows(arrays, observed: str, given: dict, n: int) -> dict:
    """``{name: value}`` from ``--given name=value`` as n rows shaped like the run's array of that name.

    ``arrays``: the run's named data (a mapping of tensors).  An integer for a
    floating (rows, K) array picks a one-hot row (a one-hot label); a list gives
    the row itself; a number fills a one-column array.
    """
    out = {}
    for name, value in given.items():
        if name not in arrays:
            raise PyroVAEError(f"--given {name}: the run has no array {name!r} (it has {', '.join(arrays)})")
        if name == observed:
            raise PyroVAEError(f"--given {name}: {name!r} holds the observations, which sample draws; "
                               "give a label or an input instead")
        t = arrays[name]
        try:
            if isinstance(value, int) and t.is_floating_point() and t.dim() == 2 and not isinstance(value, bool):
                if not 0 <= value < t.shape[1]:
                    raise PyroVAEError(f"--given {name}={value}: a one-hot {name!r} has classes 0..{t.shape[1] - 1}")
                row = torch.nn.functional.one_hot(torch.tensor(value), t.shape[1]).to(t.dtype)
            else:
                row = torch.as_tensor(value, dtype=t.dtype)
                if row.dim() == 0 and tuple(t.shape[1:]) == (1,):  # a number for a one-column array
                    row = row.reshape(1)
        except (TypeError, ValueError, RuntimeError) as e:
            raise PyroVAEError(f"--given {name}={value!r} is not a value for {name!r} ({e})") from None
        if tuple(row.shape) != tuple(t.shape[1:]):
            raise PyroVAEError(f"--given {name}: a row of {name!r} has shape {tuple(t.shape[1:])}, "
                               f"the value given has {tuple(row.shape)}")
        out[name] = row.expand((n,) + row.shape).contiguous()
    return out


@dataclass(frozen=True)
class PriorDraws:
    """Draws of the observed site, and whether each holds the total count of a real row (``template``'s, in turn)."""

    x: torch.Tensor
    row_totals: bool


def prior_predictive(model, n: int, data_dim: int, seed: int = 0, *, observed: Optional[str] = None,
                     given: Optional[dict] = None, mean: bool = False,
                     template: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(n, data_dim) draws x ~ p(x) of the model's observed site: :func:`prior_draws`' ``x``."""
    return prior_draws(model, n, data_dim, seed, observed=observed, given=given, mean=mean, template=template).x


@torch.no_grad()
def prior_draws(model, n: int, data_dim: int, seed: int = 0, *, observed: Optional[str] = None,
                given: Optional[dict] = None, mean: bool = False,
                template: Optional[torch.Tensor] = None) -> PriorDraws:
    """(n, data_dim) draws x ~ p(x) of the model's observed site, with the model's trained parameters.

    ``observed`` names the observations' array (None: the name the model takes one array by) and ``given`` holds
    n rows of the other arrays to condition on (:func:`given_rows`); arrays not
    given are left out, so the program draws them (``y=None``) or says it needs them.
    ``mean``: the mean of p(x | everything else drawn) instead of a draw of x (a decoder's mean).
    ``template``: rows of real observations (the test set's first, say), taken in turn: a count likelihood
    draws with their totals (see the module docstring); without them it cannot be sampled.
    """
    check_protocol(model)
    device = model_device(model)
    shape = (n, data_dim)
    on_device = {k: v.to(device) for k, v in (given or {}).items()}
    name = observed if observed is not None else data_name(model)

    def trace(x: torch.Tensor) -> dict:
        try:
            return _trace_obs(model, {name: x, **on_device}, seed, on_device)
        except PyroVAEError:
            raise
        except Exception as e:  # the user's program: its own error, in one line
            msg = " ".join(str(e).split())[:200] or type(e).__name__
            if isinstance(e, TypeError) and "required" in msg and observed is not None:
                raise PyroVAEError(f"the program cannot draw without an input it requires ({msg}): "
                                   "pass it with --given NAME=VALUE") from None
            raise PyroVAEError(f"the model cannot be sampled from its prior by tracing model(x) unconditioned on "
                               f"{n} rows ({type(e).__name__}: {msg}): give the model a sample(n) method") from None

    with model_params(model), eval_mode(model):
        rows = None if template is None else _cycled(template, n).to(device, torch.float32)
        site = None if rows is None else trace(rows)
        # a count likelihood that scales by each row's total (models/counts.py, library = "observed") reads it too
        if site is not None and (counts_trials(site["fn"]) or getattr(getattr(model, "likelihood", None),
                                                                          "needs_rows", False)):
            # the same totals, other values: a program that reads only each row's total draws the same
            a, b = _value(site, mean), _value(trace(rows.roll(1, dims=-1)), mean)
            reads = "the values of x, not only each row's total count"
            totals = True
        else:
            totals = False
            a, b = (_value(trace(torch.full(shape, fill, device=device)), mean) for fill in (0.0, 1.0))
            reads = "the values of x, not only its number of rows"
            if site is not None and a.shape == b.shape and not torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)):
                # a program of its own may read each row's total (scVI's observed library size, x.sum(-1)): the
                # same totals with the values rotated, and spread evenly, must then draw the same
                a, totals = _value(site, mean), True
                b = next((o for o in (_value(trace(r), mean) for r in (rows.roll(1, dims=-1), _spread(rows)))
                          if not torch.equal(torch.nan_to_num(a), torch.nan_to_num(o))), a)
                reads = "the values of x, not only its number of rows or each row's total count"
    if a.shape != shape:
        raise PyroVAEError(f"model(x) unconditioned on {n} rows draws {model.obs_site!r} with shape {tuple(a.shape)}, "
                           f"not {shape}: give the model a sample(n) method")
    if not torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)):
        raise PyroVAEError(f"model(x) reads {reads}, so tracing it unconditioned does not draw from p(x): give "
                           "the model a sample(n) method")
    return PriorDraws(a, totals)


def _spread(rows: torch.Tensor) -> torch.Tensor:
    """Rows of counts with the same totals as ``rows``, spread as evenly as counts allow over the columns."""
    totals = rows.sum(-1, keepdim=True)
    d = rows.shape[-1]
    even = torch.div(totals, d, rounding_mode="floor")
    left = totals - even * d  # the remainder, one more count in each of the first columns
    return even + (torch.arange(d, device=rows.device) < left).to(rows.dtype)


def _cycled(rows: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows: ``rows`` in turn (row j is row j mod their number)."""
    return rows[torch.arange(n) % rows.shape[0]]
