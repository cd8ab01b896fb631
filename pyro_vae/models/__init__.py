"""Models: the declared path (a graph spec compiled to one Pyro program), programs by import path, and the protocol.

Anything with ``model(x)``, ``guide(x)``, ``latent_sites`` and ``obs_site``
trains, evaluates and is diagnosed by this library.  Declared models also
accept ``data_size=N`` so their ``pyro.plate("data", size=N, subsample=...)``
scales a minibatch to an unbiased full-data ELBO; for models without it the
trainer applies the same N/B factor with ``poutine.scale``.
"""

from .build import build_model, check_against_data, check_size, check_size_before_data, check_spec
from .graph.compile import GraphModel
from .protocol import LatentModel, check_protocol

__all__ = ["GraphModel", "LatentModel", "build_model", "check_against_data", "check_protocol", "check_size", "check_size_before_data", "check_spec"]
