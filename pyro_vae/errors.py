"""Every exception and warning the library raises, and the helpers that word their one-line messages.

A problem a user can fix (bad config, bad data, missing file, corrupt
checkpoint) raises :class:`PyroVAEError` with one line naming the problem and
the fix; the CLI prints it and exits 2 without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import difflib
from typing import Iterable


class PyroVAEError(ValueError):
    """A user-fixable problem; ``str(err)`` is one line naming the problem and the fix."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A short suffix such as ``did you mean 'latent_dim'?`` (empty if nothing is close)."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> PyroVAEError:
    choices = sorted(choices)
    return PyroVAEError(
        f"unknown {kind} {name!r}: {did_you_mean(name, choices)}valid: {', '.join(choices)}"
    )


class NonFiniteError(PyroVAEError):
    """The loss or a gradient went NaN/Inf under ``on_nonfinite = 'raise'``."""



class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was saved after the current step."""

    def __init__(self, signum: int, checkpoint: Optional[Path]):
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"interrupted by signal {signum}")

    @property
    def exit_code(self) -> int:
        """The process's exit status: 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class CaptureWarning(UserWarning):
    """A model could not be captured; the trainer runs its steps eagerly."""


class DegenerateObjectiveWarning(UserWarning):
    """The configured objective has no minimizer (it can be lowered forever by rescaling)."""



class MonteCarloKLWarning(UserWarning):
    """An analytic KL would be biased for this guide (a site's prior reads a latent drawn given it): it is Monte Carlo."""


def without_trace_shapes(message: str) -> str:
    """``message`` without the table of trace shapes Pyro appends to an exception raised inside a traced program
    (our own one-line errors too, when a model raises them while Pyro traces it)."""
    return message.split("Trace Shapes:")[0].rstrip()
