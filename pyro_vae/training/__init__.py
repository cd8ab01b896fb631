"""Training: the SVI trainer (explicit state, step engines, non-finite policy, optimizer) and the callbacks it reports to."""

from .callbacks import Callbacks
from .trainer import Trainer

__all__ = ["Callbacks", "Trainer"]
