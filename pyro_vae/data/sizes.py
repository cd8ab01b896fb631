"""Resource sizes checked before allocating: a model's parameters and generated arrays against this machine's memory.

A size typed by mistake (``model.latent_dim = 1000000000``, a categorical
data column whose largest value is 1e9, ``data.num_points = 10**12``) would
otherwise fail deep inside torch with an allocator error, or swap the machine
to a halt.  The estimates here are lower bounds of what the allocation needs,
so a configuration that fits is never refused; one that cannot fit fails in
one line that names the key and the fix.
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import PyroVAEError

#: bytes per trained parameter: the float32 value, its gradient and Adam's two moments
BYTES_PER_PARAMETER = 16

#: the most integer levels a categorical likelihood infers from the data (one softmax per dimension)
MAX_INFERRED_LEVELS = 1 << 16


#: the largest size a model key may name (a latent, a layer, a level or component count): one float32 vector
#: of a larger one alone is 4 TiB, and torch's sizes (products of these) must stay below 2**63
MODEL_SIZE_LIMIT = 1 << 40


def physical_memory_bytes() -> Optional[int]:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory_bytes() -> Optional[int]:
    """The RAM a new allocation can have now: Linux's MemAvailable, else the free pages, else all of it."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return physical_memory_bytes()


def gib(n: float) -> str:
    """``n`` bytes in GiB, as the size messages write them."""
    g = n / 2**30
    return f"{g:.3g}" if g < 1000 else f"{g:,.0f}"


def check_fits(nbytes: int, what: str, fix: str, memory: Optional[int] = None) -> None:
    """Raise one line if ``nbytes`` (``what`` needs them) exceed the memory this machine has available."""
    memory = available_memory_bytes() if memory is None else memory
    if memory is not None and nbytes > memory:
        raise PyroVAEError(
            f"{what} needs ~{gib(nbytes)} GiB, more than this machine's {gib(memory)} GiB available: {fix}"
        )


def too_large(size: int) -> Optional[str]:
    """Why a model size cannot be allocated at all (None if it may fit): the words after "must be"."""
    if size <= MODEL_SIZE_LIMIT:
        return None
    return (f"<= 2**40: a size of {size:,} cannot fit in memory (one float32 vector of it alone is "
            f"{gib(4 * size)} GiB; this machine has {gib(physical_memory_bytes() or 0)} GiB): use a smaller one")


def check_synthetic_size(cfg, memory: Optional[int] = None) -> None:
    """Refuse synthetic sizes whose arrays (latents, hidden layer, data and noise) cannot fit in memory."""
    per_point = cfg.synthetic_latent_dim + 32 + 2 * cfg.synthetic_dim
    check_fits(
        4 * cfg.num_points * per_point,
        f"the synthetic data (data.num_points = {cfg.num_points} x data.synthetic_dim = {cfg.synthetic_dim})",
        "lower data.num_points or data.synthetic_dim",
        memory,
    )


def inferred_levels(train, test) -> int:
    """Categorical levels for data whose values are 0..K-1: ``max + 1``, refused if absurdly many.

    For ``model.levels`` left unset; the check stops a column holding e.g. 1e9
    (not a category code) from becoming a billion-way softmax.
    """
    top = max(float(train.max()), float(test.max()))
    if not top < MAX_INFERRED_LEVELS:  # also catches NaN
        raise PyroVAEError(
            f"likelihood 'categorical' would infer {top:.6g} + 1 levels from the data's largest value "
            f"(at most {MAX_INFERRED_LEVELS} are inferred): set model.levels, or recode the data as 0..K-1"
        )
    return max(2, int(top) + 1)
