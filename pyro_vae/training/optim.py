"""The optimizer: one Adam over every parameter, and the one update-or-skip every step engine uses."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _torch_private


def make_adam(params: Sequence[torch.Tensor], lr: float, capturable: bool = False) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused kernel where the device supports it, else foreach."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, capturable=capturable)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, foreach=True)


def is_fused(optimizer) -> bool:
    return all(g.get("fused") for g in optimizer.param_groups)


def kernel_choice(optimizer) -> dict:
    group = optimizer.param_groups[0]
    return {"fused": group["fused"], "foreach": group["foreach"], "capturable": group["capturable"]}


def restore_kernel_choice(optimizer, fused: bool, foreach: Optional[bool], capturable: bool) -> None:
    """Re-apply the kernel flags after ``load_state_dict``, which copies a checkpoint's flags over ours.

    They choose an implementation, not a hyperparameter: a checkpoint written
    by an older (foreach) trainer resumes on the fused kernel, with the same state.
    """
    for group in optimizer.param_groups:
        group["fused"], group["foreach"], group["capturable"] = fused, foreach, capturable


def masked_adam_step(optimizer, bad: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``bad`` (a 0-dim bool tensor) is set; a skip changes nothing.

    With the private paths allowed the fused kernel skips on the device, so on
    CUDA the host does not wait for ``bad`` in the middle of a step; otherwise
    the flag is read first.
    """
    if not _torch_private.masked_step(optimizer, bad.to(torch.float32)) and not bool(bad):
        optimizer.step()


def update_or_skip(optimizer, bad: torch.Tensor, masked: bool) -> bool:
    """The Adam step unless ``bad`` (the NaN/Inf flag) is set; returns whether it stepped.

    ``masked``: queue the step and let the device skip it (one read of ``bad``,
    after the whole step is queued) rather than checking ``bad`` first.
    """
    if masked:
        masked_adam_step(optimizer, bad)
        return not bool(bad)
    if bool(bad):
        return False
    if not _torch_private.fused_adam_step(optimizer):
        optimizer.step()
    return True
