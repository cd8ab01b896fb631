"""Pyro validation for a trainer's first step only: where it is switched off, and restored."""

from __future__ import annotations

import contextlib
from typing import Optional

import pyro
from pyro.infer.util import is_validation_enabled

#: ``Trainer(validation=...)``: ``auto`` skips per-step validation after the first
#: step when the model's likelihood has a support check; ``always`` never skips
#: it; ``first`` skips it for any model (the caller vouches for the data).
VALIDATION_MODES = ("auto", "always", "first")


def may_skip_validation(model, mode: str) -> bool:
    """Whether per-step Pyro validation may be switched off after the first step."""
    if mode == "always":
        return False
    if mode == "first":
        return True
    # Without validation Pyro no longer checks that observations lie in the
    # likelihood's support (a Bernoulli scores 0.5 silently), so that check has to
    # happen once, up front, which only a likelihood with check_support offers.
    likelihood = getattr(model, "likelihood", None)
    return callable(getattr(likelihood, "check_support", None))


class FirstStepValidation:
    """Validation on for the trainer's first step (shapes, supports, arguments of every site), then off.

    Its checks read values back from the device, which costs time on every step
    and rules out capture and CUDA graphs.  Validation never changes what a step
    computes, so a resumed run, which checks its first step, still matches a
    straight one bit for bit.  Later fits do not check again.
    """

    def __init__(self, model, mode: str):
        self.skips = may_skip_validation(model, mode)
        self.validated = False  # the first step ran (with the caller's setting)
        self._off: Optional[contextlib.ExitStack] = None

    @property
    def stays_on(self) -> bool:
        """Whether validation is on now and stays on for every step (so a step needs the eager program)."""
        return is_validation_enabled() and self._off is None

    @contextlib.contextmanager
    def during_fit(self):
        """The caller's setting is restored however ``fit`` ends."""
        self._off = contextlib.ExitStack() if self.skips else None
        try:
            if self._off is not None and self.validated:
                self._off.enter_context(pyro.validation_enabled(False))
            yield self
        finally:
            if self._off is not None:
                self._off.close()
                self._off = None

    def after_step(self) -> None:
        if self._off is not None and not self.validated:
            self._off.enter_context(pyro.validation_enabled(False))
            self.validated = True
