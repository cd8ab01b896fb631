"""A model object trained from Python (``pv.fit``), into a run folder if asked; and the trainer's default per-epoch test ELBO.

Training sits below evaluation, so a :class:`~pyro_vae.training.trainer.Trainer` cannot import the test ELBO it
computes each epoch: this module, which sits above both, hands evaluation's down once, when pyro_vae is imported.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

from ..config import TrainConfig
from ..data import batch
from ..evaluation.memory import test_elbo_with_retry
from ..models.protocol import model_modules
from ..runtime.threads import ThreadChoice, choose_threads, step_work, use_threads
from ..store.folder import fit_folder
from ..training.callbacks import set_default_test_elbo
from ..training.trainer import Trainer, resolve_device

set_default_test_elbo(test_elbo_with_retry)


def fit(model, train_x, test_x=None, config: TrainConfig = TrainConfig(), *, run_dir=None,
        progress: Optional[bool] = None, binarize: str = "none", validation: str = "auto",
        log: Optional[Callable[[str], None]] = None) -> Trainer:
    """Train ``model`` on ``train_x`` and return the :class:`Trainer` (its ``state.history`` holds the curve).

    ``run_dir``: checkpoint.pt and history.csv go there; a previous run in it is replaced (only files this
    library wrote are removed).  ``validation``: as for :class:`Trainer` ("first" vouches for the data of a
    model whose likelihood cannot check it up front, which also lets ``capture = "on"`` record it).  ``log``
    gets the line that says which estimator ``train.elbo = "auto"`` chose (also ``trainer.objective_choice``).
    torch's thread count follows ``config.threads`` while it trains (:func:`fit_threads`; the choice is the
    trainer's ``threads``), and is the caller's again after.
    """
    trainer = Trainer(model, config, run_dir=run_dir, test_elbo=test_elbo_with_retry, progress=progress,
                      validation=validation, log=log)
    # run_dir is checked and created before any training, not when the first checkpoint is written
    with fit_folder(run_dir) if run_dir is not None else contextlib.nullcontext():
        trainer.threads = fit_threads(model, config, batch.num_rows(train_x))
        with use_threads(trainer.threads):
            trainer.fit(train_x, test_x, binarize=binarize)
    return trainer


def fit_threads(model, config: TrainConfig, rows: int) -> ThreadChoice:
    """The thread count training ``model`` under ``config`` uses: ``config.threads``, the user's, or the one its
    step's size and the free cores pay for (runtime/threads.py)."""
    params = sum(p.numel() for m in model_modules(model) for p in m.parameters())
    work = step_work(params, min(config.batch_size, max(1, rows)), config.num_particles)
    return choose_threads(config.threads, work=work, device=resolve_device(config.device).type)
