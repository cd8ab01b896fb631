"""The registry of built-in model types, and the protocol any model follows (re-exported from protocol.py).

Anything with ``model(x)``, ``guide(x)``, ``latent_sites`` and ``obs_site``
trains, evaluates and is diagnosed by this library.  Built-in models also
accept ``data_size=N`` so their ``pyro.plate("data", size=N, subsample=...)``
scales a minibatch to an unbiased full-data ELBO; for models without it the
trainer applies the same N/B factor with ``poutine.scale``.
"""

from __future__ import annotations

from ..registry import Registry
from .protocol import LatentModel, check_protocol

__all__ = ["MODELS", "LatentModel", "build_model", "check_protocol"]

MODELS: Registry = Registry("model type")


def build_model(spec, data_dim: int, image_shape=None):
    """Build a registered model type from a :class:`~pyro_vae.config.ModelConfig`.

    ``image_shape``: the data's (height, width) where the source knows it (conv networks need it).
    """
    return MODELS[spec.type](spec, data_dim, image_shape=image_shape)


from . import vae  # noqa: E402,F401  (registers "vae")
from . import graph  # noqa: E402,F401  (registers "graph")
