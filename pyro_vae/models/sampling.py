"""Prior-predictive draws from any model's program: ``model(x)`` traced unconditioned on rows of the data's shape.

A program written as ``model(x)`` usually reads ``x`` for its plate size only,
so tracing ``poutine.uncondition(model)`` on n placeholder rows draws n
samples x ~ p(x).  A program that reads the values of ``x`` (a conditional
model) would draw from something else; it is traced on two different
placeholders with the same random numbers, and refused when they disagree.
"""

from __future__ import annotations

import torch
from pyro import poutine

from ..data import batch
from ..errors import PyroVAEError
from ..infer.rng import isolated_rng
from .params import model_params
from .protocol import _eval_mode, check_protocol, model_device


def _draw(model, rows: torch.Tensor, seed: int) -> torch.Tensor:
    with isolated_rng(seed, rows.device):
        tr = batch.call(poutine.trace(poutine.uncondition(model.model)).get_trace, rows)
    site = tr.nodes.get(model.obs_site)
    if site is None or site["type"] != "sample":
        raise PyroVAEError(f"the model has no sample site {model.obs_site!r} (its obs_site): pyro-vae sample draws "
                           "that site; name the observed site in obs_site")
    return site["value"].detach()


@torch.no_grad()
def prior_predictive(model, n: int, data_dim: int, seed: int = 0) -> torch.Tensor:
    """(n, data_dim) draws x ~ p(x) of the model's observed site, with the model's trained parameters."""
    check_protocol(model)
    device = model_device(model)
    shape = (n, data_dim)
    draws = []
    with model_params(model), _eval_mode(model):
        for fill in (0.0, 1.0):
            rows = torch.full(shape, fill, device=device)
            try:
                draws.append(_draw(model, rows, seed))
            except PyroVAEError:
                raise
            except Exception as e:  # the user's program: its own error, in one line
                msg = " ".join(str(e).split())[:200] or type(e).__name__
                raise PyroVAEError(f"the model cannot be sampled from its prior by tracing model(x) unconditioned on "
                                   f"{n} rows ({type(e).__name__}: {msg}): give the model a sample(n) method") from None
    a, b = draws
    if a.shape != shape:
        raise PyroVAEError(f"model(x) unconditioned on {n} rows draws {model.obs_site!r} with shape {tuple(a.shape)}, "
                           f"not {shape}: give the model a sample(n) method")
    if not torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)):
        raise PyroVAEError("model(x) reads the values of x, not only its number of rows, so tracing it unconditioned "
                           "does not draw from p(x): give the model a sample(n) method")
    return a
