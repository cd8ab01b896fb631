"""The app: what a command does to a run, in order (train, evaluate, sample, diagnose, report), for the CLI and the Python API alike.

One room per command, over the shared steps: prepare.py (config, data, model), runs.py (a run loaded back) and
evaluate.py (the one evaluation); pipeline.py (``train``), model_fit.py (``pv.fit``; it also hands the trainer
its default test ELBO), demo.py, sample.py, subjects.py (run folders as diagnosis subjects) and diagnose.py.
No room is named after a function this face exports, so ``import pyro_vae.app.ROOM`` always gives the module.
"""

from .diagnose import diagnose_runs, report_runs
from .evaluate import RunEvaluation, evaluate_model, evaluate_run
from .model_fit import fit
from .pipeline import train
from .prepare import check_config
from .runs import Run, load_run, load_run_data
from .sample import sample_run
from .subjects import matches, run_fingerprint, subjects_from_runs

__all__ = ["Run", "RunEvaluation", "check_config", "diagnose_runs", "evaluate_model", "evaluate_run", "fit",
           "load_run", "load_run_data", "matches", "report_runs", "run_fingerprint", "sample_run",
           "subjects_from_runs", "train"]
