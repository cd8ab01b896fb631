"""Declarative latent-variable graphs: a spec of named nodes (spec.py, families.py) compiled to a Pyro program (compile.py).

Registered as the model type ``"graph"``; a ``[model]`` section with
``[model.nodes.NAME]`` tables builds one.
"""

from __future__ import annotations

from .. import MODELS
from .compile import GraphModel
from .spec import Graph, build_graph

MODELS.register("graph")(GraphModel)

__all__ = ["GraphModel", "Graph", "build_graph"]
