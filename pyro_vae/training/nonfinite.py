"""The non-finite policy: the NaN/Inf flag, skip/rollback/raise, the consecutive-bad limit, the site diagnosis."""

from __future__ import annotations

import copy
import re
from typing import Callable, Dict, List, Optional, Sequence

import torch
import pyro
from pyro import poutine

from . import _torch_private
from ..errors import NonFiniteError
from ..infer.sites import is_density_site

#: under 'skip' or 'rollback', this many non-finite steps in a row stop training as 'raise' would
MAX_CONSECUTIVE_NONFINITE = 20


def nonfinite_in(loss: Optional[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor on the device: is the loss or any gradient NaN/Inf?  No host sync."""
    parts = []
    if grads:
        parts.append(_torch_private.norms(grads))
    if loss is not None:
        parts.append(loss.detach().reshape(1))
    if not parts:
        return torch.zeros((), dtype=torch.bool)
    values = torch.cat(parts) if len(parts) > 1 else parts[0]
    return ~torch.isfinite(values).all()


def nonfinite_flag(loss: Optional[torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`nonfinite_in` for the parameters' ``.grad``."""
    return nonfinite_in(loss, [p.grad for p in params if p.grad is not None])


def is_invalid_parameter(err: BaseException) -> bool:
    """A torch/Pyro distribution argument check failed (``validate_args``), e.g. NaN logits."""
    return isinstance(err, ValueError) and str(err).lstrip().startswith("Expected parameter")


def _invalid_parameter_name(err: ValueError) -> str:
    # "Expected parameter logits (Tensor of shape ...) of distribution Bernoulli(...) to satisfy ..."
    m = re.match(r"\s*Expected parameter (\w+).*? of distribution (\w+)", str(err), re.S)
    return f"{m.group(2)} {m.group(1)} is NaN/Inf or invalid" if m else "invalid distribution argument"


def site_order(model, x) -> Dict[str, List[str]]:
    """The guide's and the model's density sites in trace order, recorded while the model still works.

    When a later step fails inside a distribution's argument check, the site
    being built is the one after the last site the (partial) trace reached.
    """
    try:
        with torch.no_grad():
            gtr = poutine.trace(model.guide).get_trace(**x)
            mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(**x)
        return {label: [n for n, s in tr.nodes.items() if is_density_site(s)]
                for label, tr in (("guide", gtr), ("model", mtr))}
    except Exception:  # only a diagnostic aid; a model that cannot be traced twice still trains
        return {}


@torch.no_grad()
def nonfinite_sites(model, x, order: Optional[Dict[str, List[str]]] = None) -> List[str]:
    """Names of sample sites whose value, log-density or distribution arguments are NaN/Inf on ``x``."""
    order = order or {}
    bad = []
    gtr = None
    for label in ("guide", "model"):
        fn = model.guide if label == "guide" else poutine.replay(model.model, trace=gtr)
        handler = poutine.trace(fn)
        try:
            tr = handler.get_trace(**x)
        except ValueError as e:
            if not is_invalid_parameter(e):
                return bad + [f"(tracing the {label} failed: {str(e).splitlines()[0][:120]})"]
            # the partial trace ends before the site whose distribution got bad arguments
            done = [n for n, s in handler.msngr.trace.nodes.items() if is_density_site(s)]
            nxt = next((n for n in order.get(label, []) if n not in done), None)
            return bad + [f"{label}:{nxt or '?'} ({_invalid_parameter_name(e)})"]
        except Exception as e:  # the failure itself is the diagnosis
            return bad + [f"(tracing the {label} failed: {str(e).splitlines()[0][:120]})"]
        for name, site in tr.nodes.items():
            if not is_density_site(site):
                continue
            v = site["value"]
            lp = site["fn"].log_prob(v)
            if not (torch.isfinite(v).all() and torch.isfinite(lp).all()):
                bad.append(f"{label}:{name}")
        gtr = tr
    return bad


class NonFinitePolicy:
    """``train.on_nonfinite`` for one trainer: what a step with a NaN/Inf loss or gradient does.

    The step engines never apply such a step, so parameters are untouched when
    this runs; 'rollback' then returns to the snapshot taken at the epoch's
    start (or at a resume), 'raise' saves and stops with the sites named.
    """

    def __init__(self, policy: str, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer):
        self.policy = policy
        self.params = params
        self.optimizer = optimizer
        self.consecutive = 0
        self._snapshot = None

    def good_step(self) -> None:
        self.consecutive = 0

    def mark(self) -> None:
        """The state to roll back to (epoch start, or a resume); only kept under 'rollback'."""
        if self.policy == "rollback":
            self._snapshot = ([p.detach().clone() for p in self.params],
                              copy.deepcopy(self.optimizer.state_dict()))

    @property
    def marked(self) -> bool:
        return self._snapshot is not None

    def rollback(self) -> None:
        values, opt_state = self._snapshot
        with torch.no_grad():
            for p, v in zip(self.params, values):
                p.copy_(v)
        self.optimizer.load_state_dict(copy.deepcopy(opt_state))

    def bad_step(self, *, where: str, diagnose: Callable[[], List[str]], save: Callable[[], Optional[object]],
                 loss: Optional[torch.Tensor], error: Optional[ValueError], device: torch.device) -> None:
        """Apply the policy to a step that was not applied; raises :class:`NonFiniteError` under 'raise'."""
        self.optimizer.zero_grad(set_to_none=True)
        self.consecutive += 1
        if self.policy == "raise" or self.consecutive > MAX_CONSECUTIVE_NONFINITE:
            saved = save()  # first: the parameters are still those of the last good step
            # a forked RNG, so the diagnosis draws nothing from the training stream, and Pyro
            # validation on (training switches it off): its argument checks name the bad argument
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), \
                    pyro.validation_enabled(True):
                sites = diagnose()
            if error is not None:
                what = "values reached a distribution"
            else:
                what = "loss" if loss is None or not torch.isfinite(loss) else "gradient"
            repeated = (f" ({self.consecutive} steps in a row under on_nonfinite = {self.policy!r})"
                        if self.policy != "raise" else "")
            raise NonFiniteError(
                f"non-finite {what} at {where}{repeated} (sites with NaN/Inf: "
                f"{', '.join(sites) or 'none found; parameters or gradients'}); "
                + (f"last good state saved to {saved}; " if saved else "")
                + "lower train.lr, check the data, or set train.on_nonfinite = 'skip' or 'rollback'"
            )
        if self.policy == "rollback" and self._snapshot is not None:
            self.rollback()
