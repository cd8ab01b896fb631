"""The latent-variable model protocol and the registry of built-in model types.

Anything with ``model(x)``, ``guide(x)``, ``latent_sites`` and ``obs_site``
trains, evaluates and is diagnosed by this library.  Built-in models also
accept ``data_size=N`` so their ``pyro.plate("data", size=N, subsample=...)``
scales a minibatch to an unbiased full-data ELBO; for models without it the
trainer applies the same N/B factor with ``poutine.scale``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from ..errors import PyroVAEError
from ..registry import Registry

MODELS: Registry = Registry("model type")


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


def build_model(spec, data_dim: int):
    """Build a registered model type from a :class:`~pyro_vae.config.ModelConfig`."""
    return MODELS[spec.type](spec, data_dim)


from . import vae  # noqa: E402,F401  (registers "vae")
