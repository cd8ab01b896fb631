"""Device memory and out-of-memory: the allocator's error recognised, work retried in smaller chunks, training's explained.

Chunked work (evaluation, see :mod:`pyro_vae.evaluation.streaming`) is bounded by an element ``budget``, so running
out of device memory there is recoverable: halve the budget and run the chunk plan again.  Evaluation is a pure
function of (model, data, seed), so a retry changes nothing but peak memory.

Training is not retried: a smaller batch changes the optimization, which is
the user's decision.  :func:`training_oom_error` turns the allocator's
exception into one line with the batch size and the device's memory.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import torch

from ..errors import PyroVAEError
from ..infer.probe import first_line

T = TypeVar("T")


def is_oom(err: BaseException) -> bool:
    """True for the allocator's out-of-memory errors (CUDA, and CPU allocation failures)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    # the CPU allocator raises a plain RuntimeError
    return isinstance(err, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(err)


def _free_cached(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def with_halving_budget(fn: Callable[[int], T], budget: int, *, device: Optional[torch.device] = None,
                        log: Optional[Callable[[str], None]] = None, what: str = "evaluation") -> T:
    """Call ``fn(budget)``; on out-of-memory halve ``budget`` and try again.

    Gives up with a :class:`PyroVAEError` when even a budget of one element
    (one draw for one point at a time) runs out of memory.
    """
    first = budget
    while True:
        try:
            result = fn(budget)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
            err_line = first_line(e)
        else:
            if budget != first and log is not None:
                log(f"note: {what} ran out of memory on {device or 'the device'} in chunks of {first} elements; "
                    f"it ran in chunks of {budget}")
            return result
        # outside the except block, so the failed attempt's tensors (held by the
        # traceback's frames) can be freed before the retry
        _free_cached(device)
        if budget <= 1:
            raise PyroVAEError(
                f"{what} ran out of memory on {device or 'the device'} even one point and one draw at a time "
                f"({err_line[:160]}): free memory on the device or evaluate on the CPU"
            )
        budget //= 2


def device_memory(device: torch.device) -> str:
    """A short description of the device's memory, e.g. ``'79.1 GiB total, 0.3 GiB free'``."""
    gib = 2.0**30
    if device.type == "cuda":
        try:
            free, total = torch.cuda.mem_get_info(device)
            used = torch.cuda.memory_allocated(device)
            return f"{total / gib:.1f} GiB total, {free / gib:.1f} GiB free, {used / gib:.1f} GiB held by PyTorch"
        except (RuntimeError, AssertionError, ValueError):
            return "memory unknown"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        return f"{total / gib:.1f} GiB RAM, {avail / gib:.1f} GiB free"
    except (ValueError, OSError, AttributeError):
        return "memory unknown"


def training_oom_error(err: BaseException, device: torch.device, batch_size: int, num_particles: int = 1) -> PyroVAEError:
    particles = f" x {num_particles} particles" if num_particles > 1 else ""
    return PyroVAEError(
        f"out of memory while training on {device} with train.batch_size = {batch_size}{particles} "
        f"({device_memory(device)}; {first_line(err)[:160]}): lower train.batch_size"
        + (" or train.num_particles" if num_particles > 1 else "")
        + ", use smaller networks, or free memory on the device"
    )

