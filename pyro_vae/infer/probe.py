"""The program probe: why a user's model or guide fails on its first trace, said in one line with what to fix.

A first trace of a program on the data fails for reasons of the program, not
of this library: a signature that does not take the data, layers built for
other columns, tensors that do not line up with the plates.  Every caller
that traces a program for the first time (the layout, the graph of a model,
the dependency tracer, the trainer's first step) catches ``TRACE_ERRORS`` and
words the failure with these helpers, so one symptom gets one advice.
"""

from __future__ import annotations

import re

from ..errors import PyroVAEError

__all__ = ["TRACE_ERRORS", "BROADCAST_FIX", "first_line", "likely_cause", "program_error"]

# errors a trace raises when the program does not fit the data or its plates (not bugs of this library)
TRACE_ERRORS = (ValueError, RuntimeError, TypeError, NotImplementedError, IndexError, AssertionError)

# what a model must do to be traced with a leading draw dim (the one line of every such error)
BROADCAST_FIX = ("broadcast over leading batch dims: use x.shape[:-1] for sizes, `...` indexing (z[..., 0], not "
                 "z[:, 0]), reshape(*z.shape[:-1], d) (not view(-1, d)) and pyro.plate dims")

_SIGNATURE = re.compile(r"positional argument|unexpected keyword argument|"
                        r"required (keyword-only |positional )?argument")
_SHAPE = re.compile(r"shape mismatch|must be a \d-?d tensor|the size of tensor a|expanded size|"
                    r"is invalid for input of size|view size is not compatible|too many indices|must match the size|"
                    r"broadcast", re.IGNORECASE)


def first_line(e: BaseException) -> str:
    """The error's own words, without the trace-shape table Pyro appends."""
    return next((l.strip() for l in str(e).splitlines() if l.strip()), type(e).__name__)


def likely_cause(e: BaseException) -> str:
    """What to fix, for the failure actually seen on a first trace of model and guide."""
    msg = str(e)
    if isinstance(e, TypeError) and _SIGNATURE.search(msg):
        return ("model and guide are called with the data alone, by name (model(x=...), one keyword per named "
                "array): give them the signature model(self, x) and guide(self, x)")
    if "mat1 and mat2" in msg or "mat2 must be" in msg:
        return "check that the data have the columns the model's layers were built for"
    if "support" in msg and "Expected value argument" in msg:
        return "check that the data have the support the model's likelihood was built for"
    if _SHAPE.search(msg):
        return ("its tensors do not line up with pyro.plate('data'): give every site the batch shape of its plates "
                "(points,) and " + BROADCAST_FIX)
    return "check that the data have the columns and support the model was built for"


def program_error(model, data: str, e: BaseException) -> PyroVAEError:
    """The one-line error for ``model`` failing on ``data`` (named as the user knows it) with ``e``."""
    return PyroVAEError(f"{type(model).__name__} fails on {data} with one draw per point ({first_line(e)[:300]}): "
                        f"{likely_cause(e)}")
