"""A run folder as a trainer's storage: the folder made before the first step, checkpoint.pt and history.csv when due.

:class:`FolderStorage` is the storage a trainer given ``run_dir`` reports to (training/callbacks.py names the
hooks).  It sits below training, so it does not subclass the trainer's callbacks: it defines the two hooks
storage needs, and the trainer calls whichever hooks an object defines.
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import save_checkpoint
from .files import clean_stale_temporaries
from .folder import make_folder
from .history import write_history


class FolderStorage:
    """Writes a trainer's checkpoints into ``run_dir``; the trainer calls it in the writing process only."""

    def __init__(self, run_dir: os.PathLike):
        self.run_dir = Path(run_dir)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def fit_started(self) -> None:
        """The folder made now, not at the first checkpoint after an epoch of training; a killed write's leftovers go."""
        make_folder(self.run_dir)
        clean_stale_temporaries(self.run_dir)

    def checkpoint_due(self, payload: dict) -> Path:
        """``payload`` to checkpoint.pt (atomically) and its history to history.csv; returns the checkpoint's path."""
        save_checkpoint(payload, self.checkpoint)
        write_history(payload["train_state"]["history"], self.run_dir / "history.csv")
        return self.checkpoint
