"""Training: the SVI trainer (explicit state, step engines, non-finite policy, optimizer)."""

from .trainer import Trainer, fit

__all__ = ["Trainer", "fit"]
