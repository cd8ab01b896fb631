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
from ..infer.data_name import named_data
from ..models.protocol import model_modules
from ..runtime.threads import ThreadChoice, choose_threads, step_work, use_threads
from ..models.pair import as_model
from ..store.folder import fit_folder
from ..training.callbacks import set_default_test_elbo
from ..training.trainer import Trainer, resolve_device

set_default_test_elbo(test_elbo_with_retry)


def fit(model, train_x, test_x=None, config: TrainConfig = TrainConfig(), *, run_dir=None,
        progress: Optional[bool] = None, binarize: str = "none", validation: str = "auto",
        log: Optional[Callable[[str], None]] = None) -> Trainer:
    """Train ``model`` on ``train_x`` and return the :class:`Trainer` (its ``state.history`` holds the curve).

    ``model``: an object with ``model``, ``guide``, ``latent_sites`` and ``obs_site`` (a built model, or a
    program of your own), or a ``(model, guide)`` pair of Pyro functions, as ``pyro.infer.SVI`` takes them.
    A pair's observed site (the one that scores the data) and latents (the guide's continuous sample sites) are
    read off one trace on the first rows, and its parameters are the ones its functions register with
    ``pyro.param`` / ``pyro.module`` in Pyro's global param store, as under ``SVI``: a second fit goes on from
    them.  ``trainer.model`` is the pair as a model object (models/pair.py's ``FunctionPair``), for
    :func:`~pyro_vae.diagnose` and the rest; :func:`~pyro_vae.evaluate` takes the pair itself too.

    ``train_x`` / ``test_x``: tensors or NumPy arrays of rows, or mappings of named ones (``{"xs": images,
    "ys": labels}`` for ``model(xs, ys=None)``; for a pair, the first array holds the observations).

    ``run_dir``: checkpoint.pt and history.csv go there; a previous run in it is replaced (only files this
    library wrote are removed).  ``validation``: as for :class:`Trainer` ("first" vouches for the data of a
    model whose likelihood cannot check it up front, which also lets ``capture = "on"`` record it).  ``log``
    gets the line that says which estimator ``train.elbo = "auto"`` chose (also ``trainer.objective_choice``).
    torch's thread count follows ``config.threads`` while it trains (:func:`fit_threads`; the choice is the
    trainer's ``threads``), and is the caller's again after.
    """
    train_x, test_x = named_data(model, train_x, "train_x"), named_data(model, test_x, "test_x")
    model = as_model(model, train_x)
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
