"""The latent-variable model protocol, and what the library reads off any model that follows it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, List, Protocol, Sequence, runtime_checkable

import torch

from ..errors import PyroVAEError


@runtime_checkable
class LatentModel(Protocol):
    """What the trainer, the evaluator and the diagnostics need of a model."""

    latent_sites: Sequence[str]
    obs_site: str

    def model(self, x, *args: Any, **kwargs: Any) -> Any: ...

    def guide(self, x, *args: Any, **kwargs: Any) -> Any: ...



def check_protocol(obj) -> None:
    missing = [a for a in ("model", "guide", "latent_sites", "obs_site") if not hasattr(obj, a)]
    if missing:
        raise PyroVAEError(
            f"{type(obj).__name__} is not a latent-variable model: it lacks {', '.join(missing)}; "
            "give it model(x), guide(x), latent_sites and obs_site (see examples/custom_model.py)"
        )


def model_modules(model) -> List[torch.nn.Module]:
    """The model itself if it is a Module, else the Modules it holds as attributes."""
    if isinstance(model, torch.nn.Module):
        return [model]
    return [v for v in vars(model).values() if isinstance(v, torch.nn.Module)] if hasattr(model, "__dict__") else []



def _tensors(model):
    for m in model_modules(model):
        yield from m.parameters()
        yield from m.buffers()



def model_device(model) -> torch.device:
    for t in _tensors(model):
        return t.device
    return torch.device("cpu")



def model_dtype(model, x) -> torch.dtype:
    """Evaluate in the model's floating dtype (float64 models get float64 data)."""
    for t in _tensors(model):
        if t.is_floating_point():
            return t.dtype
    x = torch.as_tensor(x)
    return x.dtype if x.is_floating_point() else torch.float32



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

