"""The latent-variable model protocol, and what the library reads off any model that follows it."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from ..errors import PyroVAEError
# where the library looks at a program (infer/) finds its modules the same way: the names stay importable here
from ..infer.modules import eval_mode, model_modules  # noqa: F401


@runtime_checkable
class LatentModel(Protocol):
    """What the trainer, the evaluator and the diagnostics need of a model."""

    latent_sites: Sequence[str]
    obs_site: str

    def model(self, x, *args: Any, **kwargs: Any) -> Any:
        """The generative program p(x, z): the observations at ``obs_site``, inside ``pyro.plate("data")``."""

    def guide(self, x, *args: Any, **kwargs: Any) -> Any:
        """The variational program q(z | x): a sample site for each of ``latent_sites``, in the same plate."""



def check_protocol(obj) -> None:
    """Refuse, in one line, an object that lacks what :class:`LatentModel` asks for."""
    missing = [a for a in ("model", "guide", "latent_sites", "obs_site") if not hasattr(obj, a)]
    if missing:
        raise PyroVAEError(
            f"{type(obj).__name__} is not a latent-variable model: it lacks {', '.join(missing)}; "
            "give it model(x), guide(x), latent_sites and obs_site (see examples/custom_model.py)"
        )


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
