"""pyro_vae: declarative latent-variable models in Pyro, trained with SVI, evaluated honestly, diagnosed with ArviZ.

This module is the public API: every name here is documented and stable.  The
subpackages hold the implementation (see the README's "Architecture").
"""

from .config import (Config, DataConfig, EvalConfig, GraphSpec, ModelConfig, NetConfig, NodeConfig, ProgramSpec,
                     TrainConfig, config_from_dict, load_config)
from .data import Dataset, load_data
from .diagnostics import Diagnosis, DiagnoseSettings, Subject, diagnose, load_diagnosis
from .errors import CaptureWarning, DegenerateObjectiveWarning, NonFiniteError, PyroVAEError, TrainingInterrupted
from .evaluation import PointwiseEvaluation, evaluate, evaluate_points
from .infer import OBJECTIVES
from .models import GraphModel, LatentModel, build_model
from .models.graph.families import FAMILIES
from .models.graph.guides import GUIDE_LAWS
from .models.likelihoods import LIKELIHOODS
from .report import write_report
from .app import Run, check_config, fit, load_run, load_run_data, train
from .training import Trainer

__version__ = "0.1.0"

__all__ = [
    # configuration
    "Config", "DataConfig", "ModelConfig", "GraphSpec", "ProgramSpec", "NodeConfig", "NetConfig", "TrainConfig",
    "EvalConfig", "config_from_dict", "load_config", "check_config",
    # data and models
    "Dataset", "load_data", "LatentModel", "build_model", "GraphModel", "LIKELIHOODS", "FAMILIES", "GUIDE_LAWS",
    "OBJECTIVES",
    # training: a config into a run directory; a model object in Python; the step-level trainer
    "train", "fit", "Trainer", "Run", "load_run", "load_run_data",
    # evaluation, diagnostics, reports
    "evaluate", "evaluate_points", "PointwiseEvaluation",
    "diagnose", "DiagnoseSettings", "Subject", "Diagnosis", "load_diagnosis", "write_report",
    # errors and warnings
    "PyroVAEError", "NonFiniteError", "TrainingInterrupted", "CaptureWarning", "DegenerateObjectiveWarning",
    "__version__",
]
