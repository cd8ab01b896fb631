"""Where training stands, as one object: counters, history, the data order and every random stream.

Parameter values live in the model and Adam's moments in the optimizer; all
the rest a resumed run needs is here, so resuming is loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import pyro
import torch


@dataclass
class TrainState:
    """Everything here goes into the checkpoint (``train_state`` and ``rng``)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # minibatches processed (stepped or skipped)
    batch: int = 0  # minibatches done in the current epoch
    perm: Optional[torch.Tensor] = None  # the current epoch's data order (CPU)
    epoch_loss: float = 0.0  # sum of per-point minibatch losses in this epoch
    epoch_finite: int = 0  # minibatches of this epoch whose loss was finite (the mean's denominator)
    epoch_seconds: float = 0.0
    skipped: int = 0  # steps skipped or rolled back for non-finite values
    history: List[dict] = field(default_factory=list)
    #: draws each epoch's data order; the model's draws use torch's global streams
    data_rng: torch.Generator = field(default_factory=torch.Generator, repr=False, compare=False)

    @property
    def fresh(self) -> bool:
        """Nothing ran yet (a checkpoint saved before the first step already holds its data order)."""
        return self.step == 0 and self.epoch == 0 and self.perm is None

    def seed(self, seed: int) -> None:
        pyro.set_rng_seed(seed)
        self.data_rng.manual_seed(seed)

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step, "batch": self.batch, "perm": self.perm,
            "epoch_loss": self.epoch_loss, "epoch_finite": self.epoch_finite, "epoch_seconds": self.epoch_seconds,
            "skipped": self.skipped, "history": [dict(h) for h in self.history],
        }

    def rng_dict(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "data": self.data_rng.get_state(),
        }

    @classmethod
    def from_dict(cls, d: dict, rng: Optional[dict] = None) -> "TrainState":
        """The state of :meth:`to_dict`; with ``rng`` (:meth:`rng_dict`) the random streams are restored too."""
        # checkpoints from before epoch_finite counted every batch in the mean
        state = cls(**{"epoch_finite": d.get("batch", 0), **d})
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") and torch.cuda.is_available():
                try:
                    torch.cuda.set_rng_state_all(rng["cuda"])
                except RuntimeError:
                    pass  # a different number of GPUs: the CUDA stream restarts
            state.data_rng.set_state(rng["data"])
        return state
