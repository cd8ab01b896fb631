"""A model object trained from Python (``pv.fit``), into a run folder if asked; and the trainer's default per-epoch test ELBO.

Training sits below evaluation, so a :class:`~pyro_vae.training.trainer.Trainer` cannot import the test ELBO it
computes each epoch: this module, which sits above both, hands evaluation's down once, when pyro_vae is imported.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

from ..config import TrainConfig
from ..evaluation.memory import test_elbo_with_retry
from ..store.folder import fit_folder
from ..training.callbacks import set_default_test_elbo
from ..training.trainer import Trainer

set_default_test_elbo(test_elbo_with_retry)


def fit(model, train_x, test_x=None, config: TrainConfig = TrainConfig(), *, run_dir=None,
        progress: Optional[bool] = None, binarize: str = "none", validation: str = "auto",
        log: Optional[Callable[[str], None]] = None) -> Trainer:
    """Train ``model`` on ``train_x`` and return the :class:`Trainer` (its ``state.history`` holds the curve).

    ``run_dir``: checkpoint.pt and history.csv go there; a previous run in it is replaced (only files this
    library wrote are removed).  ``validation``: as for :class:`Trainer` ("first" vouches for the data of a
    model whose likelihood cannot check it up front, which also lets ``capture = "on"`` record it).  ``log``
    gets the line that says which estimator ``train.elbo = "auto"`` chose (also ``trainer.objective_choice``).
    """
    trainer = Trainer(model, config, run_dir=run_dir, test_elbo=test_elbo_with_retry, progress=progress,
                      validation=validation, log=log)
    # run_dir is checked and created before any training, not when the first checkpoint is written
    with fit_folder(run_dir) if run_dir is not None else contextlib.nullcontext():
        trainer.fit(train_x, test_x, binarize=binarize)
    return trainer
