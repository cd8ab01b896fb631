"""pyro_vae: declarative latent-variable models (VAEs and the autoencoder family) in Pyro.

The public API is what this module exports; everything else is private.
"""

from .capture import CaptureWarning
from .config import Config, DataConfig, ModelConfig, NetConfig, TrainConfig, config_from_dict, load_config
from .data import Dataset, load_data
from .errors import PyroVAEError
from .evaluate import evaluate, evaluate_points
from .likelihoods import LIKELIHOODS
from .models import MODELS, LatentModel, build_model
from .models.autoencoders import DegenerateObjectiveWarning
from .models.vae import GUIDES, PRIORS, VAE
from .objectives import OBJECTIVES
from .run import Run, load_run, train
from .train import Trainer, TrainState, fit

__version__ = "0.1.0"

__all__ = [
    "Config", "DataConfig", "ModelConfig", "NetConfig", "TrainConfig", "config_from_dict", "load_config",
    "Dataset", "load_data", "PyroVAEError", "evaluate", "evaluate_points", "LIKELIHOODS", "MODELS", "LatentModel",
    "build_model", "CaptureWarning", "DegenerateObjectiveWarning", "GUIDES", "PRIORS", "VAE", "OBJECTIVES", "Run", "load_run", "train", "Trainer",
    "TrainState", "fit", "__version__",
]
