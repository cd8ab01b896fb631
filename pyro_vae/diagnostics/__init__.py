"""Posterior diagnostics: how good is q(z|x), and which run's is best?"""

from .results import Diagnosis, load_diagnosis
from .run import diagnose
from .settings import DiagnoseSettings, Subject

__all__ = ["Diagnosis", "DiagnoseSettings", "Subject", "diagnose", "load_diagnosis"]
