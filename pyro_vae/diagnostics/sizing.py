"""How much diagnostic work runs at once: points per chunk under the memory budget, and threads for tiny steps."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..data import batch
from ..runtime.threads import fixed_by_user
from .settings import BUDGET

__all__ = ["chunk_size", "few_threads"]


def chunk_size(model, x: torch.Tensor, k: int, budget: int = BUDGET) -> int:
    """Points per chunk so that ``k`` draws of the widest per-point tensor stay within ``budget`` elements."""
    lik = getattr(model, "likelihood", None)
    width = max(int(getattr(lik, "out_features", 0) or 0), _data_width(x), 64)
    return max(1, budget // (width * max(k, 1)))


def _data_width(x) -> int:
    return max(int(t.shape[-1]) if t.dim() > 1 else 1 for t in batch.tensors(x))


@contextmanager
def few_threads(model, x: torch.Tensor, copies: int = 1):
    """One intra-op thread while NUTS or Adam runs many tiny sequential steps on the CPU.

    Each step is a handful of small matrix products (points x widest layer);
    splitting those across threads only adds hand-offs, and on a machine whose
    cores are shared the hand-offs dominate (measured: 7x slower gradients with
    2 threads than with 1 on a busy 2-core box).  Large problems keep every
    thread; so does a count the user set (runtime/threads.py); the caller's
    setting is restored either way.
    """
    lik = getattr(model, "likelihood", None)
    width = max(int(getattr(lik, "out_features", 0) or 0), _data_width(x))
    for m in (model.modules() if isinstance(model, torch.nn.Module) else []):
        if isinstance(m, torch.nn.Linear):
            width = max(width, m.in_features, m.out_features)
    small = batch.reference(x).device.type == "cpu" and batch.num_rows(x) * copies * width <= 2**17
    small = small and not fixed_by_user()
    old = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(old)
