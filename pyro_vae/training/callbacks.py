"""What a trainer tells its caller while it fits (fit started, epoch ended, checkpoint due, signal received), and the test ELBO it is given.

The trainer knows nothing of run folders or of evaluation: storage (store/, below training) and the
per-epoch test ELBO (evaluation/, above it) reach it through these hooks and an injected function, as
Pyro's ``SVI.step`` knows nothing of files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence

#: ``f(model, x, *, seed) -> float``: the per-point test ELBO of one epoch's history row
TestElbo = Callable[..., float]

_default_test_elbo: Optional[TestElbo] = None


class Callbacks:
    """The hooks a trainer calls, each doing nothing here: subclass it and override what you need.

    Any object that defines some of these methods will do (store/writer.py's FolderStorage, which sits below
    training and cannot subclass this, defines two).  Under torchrun the hooks are called in the writing
    process (rank 0) only.
    """

    def fit_started(self) -> None:
        """:meth:`Trainer.fit` checked its data and is about to take its first step."""

    def epoch_ended(self, row: dict) -> None:
        """An epoch ended; ``row`` is its history row (epoch, train_loss, test_elbo, seconds, beta)."""

    def checkpoint_due(self, payload: dict) -> Optional[Path]:
        """Save ``payload`` (:meth:`Trainer.state_dict` and ``Trainer.meta``); return where it went.

        Due every ``train.checkpoint_every`` epochs and after the last, when a signal stops the fit, and when
        ``train.on_nonfinite`` stops it (the last good state).
        """
        return None

    def signal_received(self, signum: int) -> None:
        """SIGINT or SIGTERM stops the fit after this step; a checkpoint is due next."""


class Hooks:
    """The callbacks one trainer reports to, hook by hook."""

    def __init__(self, callbacks: Sequence[object] = ()):
        self.callbacks = list(callbacks)

    def _each(self, hook: str) -> List[Callable]:
        """The callbacks' own ``hook`` methods (a :class:`Callbacks` hook left as it is does nothing: skipped)."""
        found = (getattr(cb, hook, None) for cb in self.callbacks)
        return [fn for fn in found if callable(fn) and getattr(fn, "__func__", fn) is not getattr(Callbacks, hook)]

    @property
    def saves(self) -> bool:
        """Whether any callback takes checkpoints (else the trainer never builds a payload)."""
        return bool(self._each("checkpoint_due"))

    def fit_started(self) -> None:
        for hook in self._each("fit_started"):
            hook()

    def epoch_ended(self, row: dict) -> None:
        for hook in self._each("epoch_ended"):
            hook(row)

    def checkpoint_due(self, payload: dict) -> Optional[Path]:
        """Every callback's save; the first place one names."""
        saved = [hook(payload) for hook in self._each("checkpoint_due")]
        return next((p for p in saved if p is not None), None)

    def signal_received(self, signum: int) -> None:
        for hook in self._each("signal_received"):
            hook(signum)


def set_default_test_elbo(fn: Optional[TestElbo]) -> None:
    """The test ELBO a trainer computes each epoch when its caller names none.

    Evaluation sits above training, so training cannot import it: the layer that wires the two
    (pyro_vae/app/model_fit.py) hands it down here once, when pyro_vae is imported.
    """
    global _default_test_elbo
    _default_test_elbo = fn


def default_test_elbo() -> Optional[TestElbo]:
    return _default_test_elbo
