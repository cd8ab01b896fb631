"""Posterior diagnostics: how good is q(z|x), and which run's is best?"""

from .results import (AmortizationGap, Comparison, Diagnosis, Generated, GridPosterior, KhatSummary, LooCheck, NutsCheck,
                      QSummary, Reference, RunDiagnosis, RunSummary, SbcResult, WorstPoint, load_diagnosis)
from .run import diagnose
from .settings import DiagnoseSettings, Subject

__all__ = ["Diagnosis", "DiagnoseSettings", "Subject", "diagnose", "load_diagnosis",
           # the typed results a Diagnosis holds
           "RunDiagnosis", "QSummary", "KhatSummary", "AmortizationGap", "Reference", "NutsCheck", "Comparison",
           "SbcResult", "RunSummary", "WorstPoint", "GridPosterior", "Generated", "LooCheck"]
