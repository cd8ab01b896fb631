"""Run specifications: the schema (schema.py), the model section's forms (short.py), a whole run (run.py), TOML (toml.py)."""

from .run import Config
from .schema import (DataConfig, EvalConfig, GraphSpec, ModelSpec, NetConfig, NodeConfig, OneLatent, ProgramSpec,
                     TrainConfig)
from .short import ModelConfig, desugar
from .toml import apply_overrides, config_from_dict, dump_toml, load_config

__all__ = ["Config", "DataConfig", "EvalConfig", "GraphSpec", "ModelConfig", "ModelSpec", "NetConfig", "NodeConfig",
           "OneLatent", "ProgramSpec", "TrainConfig", "desugar", "apply_overrides", "config_from_dict", "dump_toml", "load_config"]
