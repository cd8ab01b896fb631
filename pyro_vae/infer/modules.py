"""A program's torch modules: the ones a model object holds, and all of them in eval mode for a look at the program."""

from __future__ import annotations

from contextlib import contextmanager
from typing import List

import torch

__all__ = ["model_modules", "eval_mode"]


def model_modules(model) -> List[torch.nn.Module]:
    """The model itself if it is a Module, else the Modules it holds as attributes."""
    if isinstance(model, torch.nn.Module):
        return [model]
    return [v for v in vars(model).values() if isinstance(v, torch.nn.Module)] if hasattr(model, "__dict__") else []


@contextmanager
def eval_mode(model):
    """Every Module in eval mode (dropout off, batch-norm statistics frozen), modes restored after."""
    saved = [(m, m.training) for top in model_modules(model) for m in top.modules()]
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, mode in saved:
            m.training = mode
