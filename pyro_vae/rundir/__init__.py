"""Run directories: train a config end to end, checkpoints, history, atomic files; load a run back."""

from .run import Run, check_config, load_run, load_run_data, train

__all__ = ["Run", "check_config", "load_run", "load_run_data", "train"]
