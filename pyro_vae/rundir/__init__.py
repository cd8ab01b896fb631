"""Run directories: train a config end to end, checkpoints, history, atomic files; load a run back."""

from .run import Run, load_run, train

__all__ = ["Run", "load_run", "train"]
