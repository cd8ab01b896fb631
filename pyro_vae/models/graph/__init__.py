"""Declarative latent-variable graphs: a spec of named nodes (spec.py, families.py, guides.py, penalties.py) compiled to a Pyro program (compile.py)."""

from .compile import GraphModel
from .spec import Graph, build_graph

__all__ = ["GraphModel", "Graph", "build_graph"]
